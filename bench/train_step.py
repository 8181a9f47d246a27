"""Benchmark: one classifier training step at the demo's size (EfficientNet-B0 encoder, 64 px, batch 16,
SGD with momentum, random images), under several settings, each in a fresh process, one after the
other, so the ratios between them are measured on the same machine in one run.

What a later epoch of a classify step costs is this step times its batches: it bounds how fast any
amount of saved overhead can make a step. Settings: the demo's (one thread per op, oneDNN on,
``training.momentum_sgd``), oneDNN off, two threads per op, the mixed_bfloat16 policy, XLA
(``jit_compile=True``), and tf_keras' newer SGD class in place of the legacy one.

    .venv/bin/python bench/train_step.py
    .venv/bin/python bench/train_step.py --settings demo,newer_sgd --rounds 5 --steps 150
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

SETTINGS = {                   # name -> (environment, threads per op, precision policy, XLA, newer SGD)
    "demo": ({}, 1, "float32", False, False),
    "onednn_off": ({"TF_ENABLE_ONEDNN_OPTS": "0"}, 1, "float32", False, False),
    "two_threads": ({}, 2, "float32", False, False),
    "mixed_bfloat16": ({}, 1, "mixed_bfloat16", False, False),
    "xla": ({}, 1, "float32", True, False),
    "newer_sgd": ({}, 1, "float32", False, True),
}


def measure(threads: int, policy: str, xla: bool, newer_sgd: bool, steps: int, batch: int, size: int) -> dict:
    """In this process: seconds of the first call (trace and graph optimisation) and ms a later step."""
    import time

    import numpy as np
    import tensorflow as tf
    import tf_keras

    from multiloss import cpu_threads
    from multiloss.models import precision
    from multiloss.models.classifier import build_classifier
    from multiloss.models.unet import build_unet
    from multiloss.training import momentum_sgd

    cpu_threads.apply(threads, "--threads")
    with precision.policy(policy):
        model = build_classifier(build_unet(None, 0.9), bn_momentum=0.9)
    sgd = tf_keras.optimizers.SGD(0.01, momentum=0.9) if newer_sgd else momentum_sgd(0.01, 0.9)
    model.compile(optimizer=precision.optimizer(sgd, policy),
                  loss="categorical_crossentropy", jit_compile=xla)
    rng = np.random.default_rng(0)
    x = rng.random((batch * 20, size, size, 3), dtype=np.float32)
    y = np.eye(3, dtype=np.float32)[rng.integers(0, 3, len(x))]
    data = tf.data.Dataset.from_tensor_slices((x, y)).batch(batch).repeat()
    start = time.perf_counter()
    model.fit(data, steps_per_epoch=20, epochs=1, verbose=0)
    first = time.perf_counter() - start
    start = time.perf_counter()
    model.fit(data, steps_per_epoch=steps, epochs=1, verbose=0)
    return {"first_s": first, "step_ms": (time.perf_counter() - start) / steps * 1000}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--settings", default=",".join(SETTINGS), help=f"comma-separated, of {', '.join(SETTINGS)}")
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--rounds", type=int, default=1, help="the settings this many times, alternating; "
                        "each setting's median is shown (the machine's speed may drift)")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        _, *setting = SETTINGS[args.worker]
        print("RESULT " + json.dumps(measure(*setting, args.steps, args.batch, args.size)), flush=True)
        return
    names = [n.strip() for n in args.settings.split(",") if n.strip()]
    unknown = sorted(set(names) - set(SETTINGS))
    if unknown:
        raise SystemExit(f"--settings: unknown {unknown}; choose from {', '.join(SETTINGS)}")
    if args.rounds < 1:
        raise SystemExit(f"--rounds must be at least 1, got {args.rounds}")
    runs = {name: [] for name in names}
    for _ in range(args.rounds):
        for name in names:
            env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", **SETTINGS[name][0]}
            out = subprocess.run([sys.executable, __file__, "--worker", name, "--steps", str(args.steps),
                                  "--batch", str(args.batch), "--size", str(args.size)],
                                 env=env, capture_output=True, text=True, check=True).stdout
            runs[name].append(json.loads(out.rsplit("RESULT ", 1)[1]))
    results = {name: {key: statistics.median(r[key] for r in rs) for key in rs[0]} for name, rs in runs.items()}
    base = names[0] if "demo" not in results else "demo"
    print(f"| setting | first call s | ms a step (median of {args.rounds}) | ÷ {base} |")
    print("|---|---:|---:|---:|")
    for name, r in results.items():
        print(f"| {name} | {r['first_s']:.1f} | {r['step_ms']:.1f} | {r['step_ms'] / results[base]['step_ms']:.2f} |")


if __name__ == "__main__":
    main()
