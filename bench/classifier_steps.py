"""Benchmark: classifier trainings with one shared traced graph per process against one graph per
training (the path before graphs were shared, ``MULTILOSS_SHARED_GRAPH=0``), side by side in one run.

1. ``main`` up to the crop in a fresh home (the demo's data and U-Nets), once for both paths.
2. The same N classify steps (default: the demo's 12 losses, seed 0, its classify settings) on both
   paths in ONE fresh process, interleaved (loss 1 old then new, loss 2 new then old, ...) so that
   other load on the machine falls on both alike; each step split into first epoch, later epochs
   and fixed costs (the step's wall time minus its epochs: loading, building, predicting, scoring,
   figures, logging), and the shared graphs' trace count after it.
3. The 7-point ``cal_cce`` sweep (its λ grid), one fresh process per path.
4. ``--demo``: the demo end to end (bench/demo_pipeline.py's launch), each path in its own fresh home.
5. ``--baseline REV``: the same against the code of commit REV (the main this work started from, in a
   git worktree under bench/out): its classify steps in one process of their own, after this
   checkout's in another (REV's code logs no epoch times, so only walls and scores are compared), and
   with ``--demo`` its demo end to end in a fresh home.

Paths run one after the other on the same machine; each table gives new ÷ old. Scores are compared
step by step (same seeds: the two paths train the same networks on the same batches).

    .venv/bin/python bench/classifier_steps.py                    # steps 1-3
    .venv/bin/python bench/classifier_steps.py --demo             # and the demo end to end both ways
    .venv/bin/python bench/classifier_steps.py --losses cce,focal --sweep-points 0
    .venv/bin/python bench/classifier_steps.py --demo --baseline 04eb7dc   # and against that commit
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))
import demo_pipeline  # noqa: E402  (bench/demo_pipeline.py: the demo's launcher and memory sampling)

from multiloss import names  # noqa: E402

PATHS = {"per training": "0", "shared": "1"}         # label -> MULTILOSS_SHARED_GRAPH
DEMO_LOSSES = ("cce,focal,kld,hinge,ls_cce,ls_focal,cal_cce,cce_entropy,cal_neg_entropy,cal_kld,cal_focal,"
               "cal_hinge")


def classify_argv(profile: dict, loss: str, data: str, seed: int) -> list[str]:
    """The classify stage's arguments as the demo's ``main`` gives them (its profile's classify settings)."""
    settings = {k: v for k, v in profile["classify"].items() if k != "losses"}
    argv = ["--loss", loss, "--data", data, "--seed", str(seed)]
    for key, value in settings.items():
        argv += [f"--{key.replace('_', '-')}", str(value)]
    return argv


def worker(args) -> None:
    """In a fresh process: the steps of one path, timed; prints one JSON line per step."""
    import gc

    import mlflow
    import tf_keras
    import yaml

    from multiloss import paths
    from multiloss.stages import classify, sweep
    from multiloss.tracking import registry, store

    graph = None                                   # a baseline commit's code may predate shared graphs
    if importlib.util.find_spec("multiloss.classification.graph"):
        from multiloss.classification import graph

    profile = yaml.safe_load((paths.CONFIG_DIR / f"{args.profile}.yaml").read_text())
    if importlib.util.find_spec("multiloss.cpu_threads"):      # as main gives its processes (older code: TF's)
        from multiloss import cpu_threads
        from multiloss.pipeline import profiles

        cpu_threads.apply(profiles.intra_op_threads(profile, args.profile), f"profile {args.profile}")
    data = str(paths.project_root() / profile["crop"]["out"] / "chest_xray")
    store.configure()
    client = mlflow.MlflowClient()
    with registry.models_kept_in_memory():               # as a pipeline's process does
        if args.part in ("classify", "baseline"):
            for number, loss in enumerate(args.losses.split(",")):
                order = list(PATHS.items()) if number % 2 == 0 else list(PATHS.items())[::-1]
                for label, shared in order if args.part == "classify" else [(args.part, None)]:
                    if shared is not None:
                        os.environ[graph.SHARED_GRAPH_ENV] = shared
                    started = time.perf_counter()
                    classify.main(classify_argv(profile, loss, data, args.seed))
                    wall = time.perf_counter() - started
                    version = max(registry.versions(names.CLASSIFIER_MODEL), key=lambda v: int(v.version))
                    run = client.get_run(version.run_id)
                    epochs = [m.value for m in client.get_metric_history(run.info.run_id, "epoch/seconds")] or [0.0]
                    print(json.dumps({"path": label, "loss": loss, "wall": wall, "first_epoch": epochs[0],
                                      "later_epochs": sum(epochs[1:]), "epochs": len(epochs),
                                      "traces": graph.tracing_counts()["train"] if graph else 0,
                                      "val_mcc": run.data.metrics["val_mcc"], "test_mcc": run.data.metrics["test_mcc"],
                                      "val_loss": run.data.metrics["val_loss"],
                                      "threads": run.data.params.get("intra_op_threads", "default")}), flush=True)
                    if graph:
                        graph.clear_session()      # as the pipeline does between steps
                    else:
                        tf_keras.backend.clear_session()
                    gc.collect()
        else:
            settings = {k: v for k, v in profile["classify"].items() if k not in ("losses",)}
            argv = ["--loss", "cal_cce", "--data", data, "--seed", str(args.seed),
                    "--study", f"bench-{os.environ.get('MULTILOSS_SHARED_GRAPH', 'baseline')}-{time.time_ns()}"]
            for key, value in settings.items():
                argv += [f"--{key.replace('_', '-')}", str(value)]
            started = time.perf_counter()
            sweep.main(argv)
            print(json.dumps({"sweep_wall": time.perf_counter() - started}), flush=True)


def run_worker(home: Path, shared: str | None, part: str, args, log: Path, code: Path | None = None) -> list[dict]:
    """``part`` in a fresh process; ``shared``: the path, or None (the part interleaves both);
    ``code``: another checkout whose package the process imports (a baseline commit's)."""
    env = {**demo_pipeline.STARTING_ENV, "MULTILOSS_HOME": str(home), **({names_env(): shared} if shared else {}),
           **({"PYTHONPATH": str(code / "src")} if code else {})}
    env.pop("MLFLOW_TRACKING_URI", None)
    env.pop("MLFLOW_RUN_ID", None)
    command = [sys.executable, __file__, "--worker", part, "--profile", args.profile, "--losses", args.losses,
               "--seed", str(args.seed)]
    with open(log, "w") as out:
        result = subprocess.run(command, env=env, stdout=subprocess.PIPE, stderr=out, text=True, cwd=BENCH.parent)
    if result.returncode:
        raise SystemExit(f"{part} ({shared}) failed; see {log}")
    return [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]


def names_env() -> str:
    from multiloss.classification.graph import SHARED_GRAPH_ENV
    return SHARED_GRAPH_ENV


def step_table(rows: list[dict]) -> str:
    results = {label: [r for r in rows if r["path"] == label] for label in PATHS}
    old, new = results["per training"], results["shared"]
    lines = ["| loss | path | wall s | first epoch s | later epochs s | fixed s | shared traces | val MCC | test MCC |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for row in rows:
        fixed = row["wall"] - row["first_epoch"] - row["later_epochs"]
        lines.append(f"| {row['loss']} | {row['path']} | {row['wall']:.1f} | {row['first_epoch']:.1f} | "
                     f"{row['later_epochs']:.1f} | {fixed:.1f} | {row['traces']} | {row['val_mcc']:.4f} | "
                     f"{row['test_mcc']:.4f} |")
    total = {label: sum(r["wall"] for r in rows) for label, rows in results.items()}
    later_fixed = [r["wall"] - r["first_epoch"] - r["later_epochs"] for r in new[1:]]
    same = sum(a["test_mcc"] == b["test_mcc"] and a["val_mcc"] == b["val_mcc"] for a, b in zip(old, new))
    lines += ["", f"{len(new)} classify steps in one process: per training {total['per training']:.1f} s, "
                  f"shared {total['shared']:.1f} s, **shared ÷ per training {total['shared'] / total['per training']:.2f}** "
                  "(target ≤ 0.55)",
              (f"fixed cost of a later training (shared): mean {sum(later_fixed) / len(later_fixed):.1f} s, "
               f"max {max(later_fixed):.1f} s (target ≤ 3 s)") if later_fixed else "",
              f"first epoch: per training mean {sum(r['first_epoch'] for r in old) / len(old):.1f} s; shared "
              f"{new[0]['first_epoch']:.1f} s for the first step, then mean "
              + (f"{sum(r['first_epoch'] for r in new[1:]) / len(new[1:]):.1f} s" if new[1:] else "-"),
              f"scores equal on both paths (val and test MCC): {same} of {len(new)} steps",
              f"threads per op (intra_op_threads): {', '.join(sorted({str(r.get('threads')) for r in rows}))}"]
    return "\n".join(lines)


def worktree(rev: str) -> Path:
    """A checkout of commit ``rev`` under bench/out (made once), whose src/ a worker imports."""
    folder = BENCH / "out" / f"baseline-{rev}"
    if not folder.is_dir():
        subprocess.run(["git", "worktree", "add", "--detach", str(folder), rev], cwd=BENCH.parent, check=True,
                       capture_output=True)
    return folder


def baseline_table(rows: list[dict], old: list[dict], rev: str) -> str:
    new = [r for r in rows if r["path"] == "shared"]
    same = sum(a["test_mcc"] == b["test_mcc"] and a["val_mcc"] == b["val_mcc"] for a, b in zip(old, new))
    lines = [f"| loss | {rev} wall s | shared wall s | val MCC {rev} / shared | test MCC {rev} / shared |",
             "|---|---:|---:|---:|---:|"]
    lines += [f"| {a['loss']} | {a['wall']:.1f} | {b['wall']:.1f} | {a['val_mcc']:.4f} / {b['val_mcc']:.4f} | "
              f"{a['test_mcc']:.4f} / {b['test_mcc']:.4f} |" for a, b in zip(old, new)]
    total_old, total_new = sum(r["wall"] for r in old), sum(r["wall"] for r in new)
    return "\n".join(lines + ["", f"{len(new)} classify steps: {rev} {total_old:.1f} s, shared {total_new:.1f} s, "
                                   f"**shared ÷ {rev} {total_new / total_old:.2f}** (target ≤ 0.55); "
                                   f"scores equal: {same} of {len(new)}"])


def wall_table(walls: dict[str, float], rev: str | None, target: float) -> str:
    lines = ["| code | wall s |", "|---|---:|", *(f"| {label} | {seconds:.1f} |" for label, seconds in walls.items()), ""]
    for base in ("per training", *([rev] if rev else [])):
        lines.append(f"**shared ÷ {base} {walls['shared'] / walls[base]:.2f}** (target ≤ {target})")
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--home", type=Path, help="default: a new folder under bench/out")
    parser.add_argument("--profile", default="demo")
    parser.add_argument("--losses", default=DEMO_LOSSES)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--sweep-points", type=int, default=7, help="0: skip the sweep (cal_cce's λ grid has 7)")
    parser.add_argument("--steps", action=argparse.BooleanOptionalAction, default=True,
                        help="--no-steps: skip the classify steps (only the sweep and the demo)")
    parser.add_argument("--demo", action="store_true", help="also the demo end to end on both paths")
    parser.add_argument("--baseline", metavar="REV", help="also compare with this commit's code (a git worktree)")
    parser.add_argument("--worker", choices=("classify", "baseline", "sweep"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        args.part = args.worker
        return worker(args)

    (BENCH / "out").mkdir(exist_ok=True)
    home = args.home or Path(tempfile.mkdtemp(prefix="classifier-steps-", dir=BENCH / "out"))
    home.mkdir(parents=True, exist_ok=True)
    loads = [os.getloadavg()[0]]
    print(f"home {home}; preparing the demo's data and U-Nets (main until=crop) ...", flush=True)
    demo_pipeline.launch(home, args.profile, ["-P", "until=crop"], home / "prepare.log")

    baseline = worktree(args.baseline) if args.baseline else None
    rows = run_worker(home, None, "classify", args, home / "classify.log") if args.steps else []
    if rows:
        print(f"\n## {len(rows) // 2} classify steps on each path, interleaved in one process\n\n{step_table(rows)}",
              flush=True)
    if baseline and rows:
        old = run_worker(home, None, "baseline", args, home / "baseline.log", code=baseline)
        print(f"\n## the same classify steps at {args.baseline}, in a process of their own\n\n"
              f"{baseline_table(rows, old, args.baseline)}", flush=True)

    if args.sweep_points:
        runs = [(label, shared, None) for label, shared in PATHS.items()]
        runs += [(args.baseline, None, baseline)] if baseline else []
        sweeps = {label: run_worker(home, shared, "sweep", args, home / f"sweep-{label.replace(' ', '-')}.log",
                                    code=code)[-1]["sweep_wall"] for label, shared, code in runs}
        print(f"\n## the {args.sweep_points}-point cal_cce sweep\n\n{wall_table(sweeps, args.baseline, 0.55)}",
              flush=True)

    if args.demo:
        walls = {}
        for label, shared in PATHS.items():
            folder = home / f"demo-{shared}"
            folder.mkdir(exist_ok=True)
            demo_pipeline.STARTING_ENV[names_env()] = shared      # what launch gives the pipeline
            walls[label] = demo_pipeline.launch(folder, args.profile, [], folder / "main.log")[0]
        demo_pipeline.STARTING_ENV.pop(names_env(), None)
        if baseline:
            folder = home / f"demo-{args.baseline}"
            folder.mkdir(exist_ok=True)
            walls[args.baseline] = demo_pipeline.launch(folder, args.profile, [], folder / "main.log", baseline)[0]
        print(f"\n## make demo end to end, each in a fresh home\n\n{wall_table(walls, args.baseline, 0.75)}",
              flush=True)
    loads.append(os.getloadavg()[0])
    print(f"\nload average before/after: {loads[0]:.2f} / {loads[1]:.2f} on {os.cpu_count()} CPUs", flush=True)


if __name__ == "__main__":
    main()
