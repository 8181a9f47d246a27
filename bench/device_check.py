"""The GPU options' figures in minutes: the paper profile's first U-Net loss and first classifier
loss, trained for a few hundred steps at 512 px under each ``precision`` (and ``jit_compile`` off
and on), printing images/s and peak GPU memory per setting.

    bench/device_check.sh                        # on a machine with a GPU: ~8 minutes on one H200
    bench/device_check.sh --steps 100 --jit off  # fewer settings, sooner
    bench/device_check.sh --cpu-smoke            # this script's logic on a CPU, tiny sizes (~1-2 min)

Each setting builds and compiles its model the way the segment and classify stages do (the profile's
settings through the stage's parser, then ``segmentation.train.compiled_unet`` and the shared
classifier graph), on synthetic phantoms written at the image size (square). ``--input memory``
(default) times the model on batches held in memory after one pass of our tf.data pipeline, so the
figures are the model's, not the CPU's; ``--input pipeline`` times the whole pipeline (augmentation
per step). Images/s are over the timed steps only (after ``--warmup`` steps that trace, compile and
autotune); peak memory is TensorFlow's allocator peak on GPU:0 from the build of the setting's model
to its last step. Settings that would start after ``--budget-s`` seconds are listed as skipped.
Without a GPU it stops at once with exit status 2, unless ``--cpu-smoke``.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import sys
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np
import tensorflow as tf
import tf_keras

import multiloss  # noqa: F401  (sets the environment segmentation-models and tf-keras need)

PAPER = "paper"
SMOKE = {"size": 64, "steps": 3, "warmup": 2, "n_seg": 8, "n_cls": 12}


def arguments(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", default=PAPER, help="the profile whose first losses and settings are trained")
    parser.add_argument("--size", type=int, default=512, help="image size of both models (the paper's 512)")
    parser.add_argument("--steps", type=int, default=200, help="timed training steps per setting")
    parser.add_argument("--warmup", type=int, default=10, help="untimed steps first (tracing, XLA compile)")
    parser.add_argument("--precisions", default="float32,mixed_bfloat16,mixed_float16")
    parser.add_argument("--jit", choices=("off", "on", "both"), default="both", help="jit_compile settings to run")
    parser.add_argument("--models", default="unet,classifier")
    parser.add_argument("--input", choices=("memory", "pipeline"), default="memory")
    parser.add_argument("--n-seg", type=int, default=32, help="synthetic image/mask pairs written")
    parser.add_argument("--n-cls", type=int, default=30, help="synthetic classification images per class (a fifth of them test)")
    parser.add_argument("--budget-s", type=float, default=420, help="start no setting after this many seconds")
    parser.add_argument("--work", default="", help="folder for the phantoms and results.json (default: a temporary one)")
    parser.add_argument("--cpu-smoke", action="store_true",
                        help=f"no GPU needed: tiny sizes ({SMOKE['size']} px, {SMOKE['steps']} steps), jit off")
    args = parser.parse_args(argv)
    if args.cpu_smoke:
        for key, value in SMOKE.items():
            setattr(args, key, value)
        args.jit = "off"
    return args


def require_gpu(cpu_smoke: bool) -> list:
    gpus = tf.config.list_physical_devices("GPU")
    if not gpus and not cpu_smoke:
        print("device_check: no GPU is visible to TensorFlow (tf.config.list_physical_devices('GPU') is "
                         "empty): this check measures GPU training. Check the driver and CUDA libraries "
                         "(nvidia-smi; pip install 'tensorflow[and-cuda]==2.21.0'), or pass --cpu-smoke to "
                         "check the script's logic on a CPU.", file=sys.stderr)
        raise SystemExit(2)
    for gpu in gpus:
        try:
            tf.config.experimental.set_memory_growth(gpu, True)  # peak = what the training needed
        except RuntimeError:                                     # the GPU was initialised already
            pass
    return gpus


def stage_argv(settings: dict, **given) -> list[str]:
    """The profile's settings of a stage (and ``given``) as its command line."""
    return [word for key, value in {**settings, **given}.items()
            for word in ("--" + key.replace("_", "-"), str(value))]


def held(ds: tf.data.Dataset, batches: int, source: str) -> tf.data.Dataset:
    if source == "memory":
        return ds.take(batches).cache().repeat()
    return ds.repeat()


def unet_setting(profile: dict, data: Path, size: int, policy: str, jit: bool, source: str):
    """The profile's first U-Net loss, compiled as the segment stage does, and its training batches."""
    from multiloss.data.datasets import mask_dataset
    from multiloss.pipeline.profiles import stage_settings
    from multiloss.segmentation import train
    from multiloss.stages import segment

    loss = profile["segment"]["losses"][0]
    args = segment.parse_args(stage_argv(stage_settings(profile, "segment"), loss=loss, data=data / "lungs",
                                         img_size=size, precision=policy, jit_compile=str(jit).lower()))
    prepared = train.prepare(train.UNetConfig.from_parameters(vars(args)))
    config, pairs = prepared.config, prepared.pairs
    ds = mask_dataset(pairs["image"], pairs["masks"], img_size=size, batch_size=config.batch_size, shuffle=True,
                      augment=True, seed=config.seed, drop_remainder=True)
    model = train.compiled_unet(config, prepared.loss)
    return f"U-Net {loss}", model, held(ds, len(pairs) // config.batch_size, source), config.batch_size


def classifier_setting(profile: dict, data: Path, size: int, policy: str, jit: bool, source: str):
    """The profile's first classifier loss on a fresh U-Net's encoder, built as the classify stage's
    shared graph is, reset for its training, and its training batches."""
    from multiloss.classification import graph
    from multiloss.classification.train import LOSS_PARAMETERS, ClassifierConfig
    from multiloss.data.datasets import image_dataset
    from multiloss.data.readers import read_kermany
    from multiloss.losses import classification_loss
    from multiloss.models.unet import build_unet
    from multiloss.pipeline.profiles import stage_settings
    from multiloss.stages import classify
    from multiloss.training import distribution_strategy

    loss = profile["classify"]["losses"][0]
    args = classify.parse_args(stage_argv(stage_settings(profile, "classify"), loss=loss,
                                          data=data / "chest_xray", img_size=size, precision=policy,
                                          jit_compile=str(jit).lower()))
    config = ClassifierConfig(loss=loss, loss_params={k: getattr(args, k) for k in LOSS_PARAMETERS},
                              **classify.training_arguments(args))
    unet = build_unet(None, config.bn_momentum)         # the stage's is a trained, registered one
    key = graph.GraphKey(graph.architecture_digest(unet.get_config()), config.strategy, config.bn_momentum,
                         config.momentum, (), config.precision, config.jit_compile)
    built = graph.ClassifierGraph.build(unet, key, distribution_strategy(config.strategy))
    built.reset(loss=classification_loss(config.loss, variant=config.variant, **config.loss_params),
                lr=config.lr, seed=config.seed)
    frame = read_kermany(config.data)
    train = frame[frame.split == "train"]
    ds = image_dataset(train["path"], train["label"], img_size=size, batch_size=config.batch_size, shuffle=True,
                       seed=config.seed, augment=config.augment == "paper", drop_remainder=True)
    return f"classifier {loss}", built.model, held(ds, len(train) // config.batch_size, source), config.batch_size


def peak_bytes(gpus: list) -> int | None:
    return tf.config.experimental.get_memory_info("GPU:0")["peak"] if gpus else None


def measure(build, gpus: list, steps: int, warmup: int) -> dict:
    if gpus:
        tf.config.experimental.reset_memory_stats("GPU:0")
    started = time.perf_counter()
    name, model, ds, batch = build()
    built = time.perf_counter()
    model.fit(ds, steps_per_epoch=warmup, epochs=1, verbose=0)
    warm = time.perf_counter()
    history = model.fit(ds, steps_per_epoch=steps, epochs=1, verbose=0)
    done = time.perf_counter()
    loss = float(history.history["loss"][-1])
    return {"model": name, "batch": batch, "build_s": built - started, "warmup_s": warm - built,
            "timed_s": done - warm, "images_per_s": steps * batch / (done - warm), "peak_bytes": peak_bytes(gpus),
            "final_loss": loss, "finite": bool(np.isfinite(loss)),
            "compute_dtype": model.get_layer(index=1).compute_dtype, "output_dtype": model.output.dtype.name}


def table(rows: list[dict]) -> str:
    lines = ["| model | precision | jit_compile | batch | build s | warm-up s | images/s | peak GPU memory | final loss |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|"]
    for row in rows:
        if "skipped" in row or "failed" in row:
            why = f"skipped: {row['skipped']}" if "skipped" in row else f"failed: {row['failed']}"
            lines.append(f"| {row['model']} | {row['precision']} | {row['jit_compile']} | | | | {why} | | |")
            continue
        memory = f"{row['peak_bytes'] / 2**30:.2f} GiB" if row["peak_bytes"] is not None else "n/a (CPU)"
        lines.append(f"| {row['model']} | {row['precision']} | {row['jit_compile']} | {row['batch']} | "
                     f"{row['build_s']:.1f} | {row['warmup_s']:.1f} | {row['images_per_s']:.1f} | {memory} | "
                     f"{row['final_loss']:.4f}{'' if row['finite'] else ' (not finite)'} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    args = arguments(argv)
    gpus = require_gpu(args.cpu_smoke)
    from multiloss.data.synthetic import write_synthetic
    from multiloss.models.precision import check_precision
    from multiloss.pipeline.profiles import load_profile

    precisions = [check_precision(p.strip(), "--precisions") for p in args.precisions.split(",") if p.strip()]
    jits = {"off": [False], "on": [True], "both": [False, True]}[args.jit]
    builders = {"unet": unet_setting, "classifier": classifier_setting}
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = sorted(set(models) - set(builders))
    if unknown:
        raise SystemExit(f"device_check: --models: unknown {', '.join(unknown)} (known: unet, classifier)")
    profile = load_profile(args.profile)
    started = time.perf_counter()
    with contextlib.nullcontext(args.work) if args.work else tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        data = work / f"phantoms-{args.size}"
        if not data.exists():
            write_synthetic(data, n_seg=args.n_seg, n_cls=args.n_cls, size=args.size, seed=0)
        print(f"device_check: {', '.join(d.name for d in gpus) or 'CPU (smoke)'}; phantoms at {args.size} px in "
              f"{data} ({time.perf_counter() - started:.0f} s)", flush=True)
        rows = []
        # the settings without XLA first (for every model), then with: the budget cuts the XLA ones first
        for jit in jits:
            for model in models:
                for policy in precisions:
                    setting = {"precision": policy, "jit_compile": str(jit).lower()}
                    elapsed = time.perf_counter() - started
                    if elapsed > args.budget_s:
                        rows.append({"model": model, **setting, "skipped": f"budget ({elapsed:.0f} s > {args.budget_s:.0f} s)"})
                        continue
                    build = lambda m=model, p=policy, j=jit: builders[m](profile, data, args.size, p, j, args.input)  # noqa: E731
                    try:
                        row = {**setting, **measure(build, gpus, args.steps, args.warmup)}
                    except Exception as err:       # one setting's failure (an XLA error, out of memory) is a finding
                        message = f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"[:160]
                        rows.append({"model": model, **setting, "failed": message})
                        traceback.print_exc()
                        print(f"device_check: {model}, {policy}, jit_compile {setting['jit_compile']}: FAILED "
                              f"{message}", flush=True)
                    else:
                        rows.append(row)
                        print(f"device_check: {row['model']}, {policy}, jit_compile {setting['jit_compile']}: "
                              f"{row['images_per_s']:.1f} images/s, build {row['build_s']:.1f} s, "
                              f"warm-up {row['warmup_s']:.1f} s", flush=True)
                    tf_keras.backend.clear_session()
                    gc.collect()
        total = time.perf_counter() - started
        summary = {"argv": sys.argv[1:] if argv is None else list(argv), "devices": [d.name for d in gpus],
                   "tensorflow": tf.__version__, "input": args.input, "size": args.size, "steps": args.steps,
                   "seconds": total, "rows": rows}
        if args.work:
            (work / "results.json").write_text(json.dumps(summary, indent=2))
    print(f"\ndevice_check at {args.size} px, {args.steps} timed steps after {args.warmup} (input: {args.input}), "
          f"{total:.0f} s in all:\n")
    print(table(rows))
    failed = [r for r in rows if "failed" in r]
    bad = [r for r in rows if "finite" in r and not r["finite"]]
    if failed or bad:
        print(f"\ndevice_check: {len(failed)} setting(s) failed, {len(bad)} ended with a non-finite loss",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
