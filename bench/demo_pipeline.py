"""Benchmark: the demo pipeline as the README's first command runs it (``mlflow run . -e main``),
in a fresh MULTILOSS_HOME (or a given one), then once more to time the all-reused rerun.

Prints, per step, the wall time of its child run (from the run's start and end times), its headline
metric and whether it ran or was reused; the total against the 15-minute target; the
peak memory of the pipeline process; and the load average, since the machine may be shared.

    .venv/bin/python bench/demo_pipeline.py                      # fresh home under bench/out/
    .venv/bin/python bench/demo_pipeline.py --home /tmp/h --runs 1 -- -P seeds=0,1
    .venv/bin/python bench/demo_pipeline.py --runs 1 --workers 1,2    # one step at a time against two
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from multiloss import names

REPO = Path(__file__).resolve().parents[1]
TARGET_SECONDS = 15 * 60
# The environment as we were started: reading a run's results points MLflow (and, through
# mlflow.set_tracking_uri, MLFLOW_TRACKING_URI) at that home's store, which a later launch must not inherit.
STARTING_ENV = dict(os.environ)
HEADLINE = {"segment": "val_dice_best", "segment_eval": "champion_dice_mean", "classify": "test_mcc",
            "ensemble": "test_mcc"}


def _proportional_mib(pid: int, rss_pages: int) -> float:
    """A process's proportional set size (PSS: each shared page split among its users, so the
    processes' figures add up; TensorFlow's libraries are mapped by every process), from
    smaps_rollup; its resident size where that file is missing."""
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1]) / 1024
    except (OSError, ValueError, IndexError):
        pass
    return rss_pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def tree_memory_mib(root: int) -> float:
    """Memory of a process and all its descendants now, in MiB (sum of PSS; 0 without /proc)."""
    parents, rss = {}, {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except (OSError, IndexError):
                continue
            parents[int(entry.name)], rss[int(entry.name)] = int(fields[1]), int(fields[21])
    tree, frontier = {root}, [root]
    while frontier:
        current = frontier.pop()
        children = [pid for pid, parent in parents.items() if parent == current and pid not in tree]
        tree.update(children)
        frontier.extend(children)
    return sum(_proportional_mib(pid, rss[pid]) for pid in tree if pid in rss)


def sampled_run(command: list[str], env: dict, log: Path, cwd: Path = REPO) -> tuple[float, int, object, float]:
    """Run ``command`` (output to ``log``); its wall seconds, exit code, resource usage (its
    largest process's exact peak: ``ru_maxrss``) and the peak memory of its whole process tree
    (summed PSS, sampled twice a second), in MiB."""
    started = time.monotonic()
    with open(log, "w") as out:
        process = subprocess.Popen(command, env=env, cwd=cwd, stdout=out, stderr=subprocess.STDOUT)
        peak_tree, done = [0.0], threading.Event()

        def sample() -> None:
            while not done.wait(0.5):
                peak_tree[0] = max(peak_tree[0], tree_memory_mib(process.pid))
        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        _, status, usage = os.wait4(process.pid, 0)     # this launch's process tree only
        done.set()
        sampler.join()
    return time.monotonic() - started, os.waitstatus_to_exitcode(status), usage, peak_tree[0]


def launch(home: Path, profile: str, extra: list[str], log: Path,
           repo: Path = REPO) -> tuple[float, float, float, float, str]:
    """Run main once (the project in ``repo``: this checkout, or another commit's worktree); returns
    wall seconds, CPU seconds, peak memory (MiB) of the largest process it started (RSS) and of all
    of them together (PSS, sampled twice a second), and the parent run id."""
    bin_dir = str(Path(sys.executable).parent)           # the stage commands call `python`: ours
    env = {**STARTING_ENV, "MULTILOSS_HOME": str(home), "PATH": bin_dir + os.pathsep + STARTING_ENV.get("PATH", "")}
    env.pop("MLFLOW_RUN_ID", None)
    if repo != REPO:                                     # its own code, not the installed checkout's
        env["PYTHONPATH"] = str(repo / "src")
    uri = subprocess.run([sys.executable, "-m", "multiloss.tracking", "uri"], env=env, cwd=repo, check=True,
                         capture_output=True, text=True).stdout.strip()
    env["MLFLOW_TRACKING_URI"] = uri
    subprocess.run([sys.executable, "-m", "multiloss.tracking", "init"], env=env, cwd=repo, check=True,
                   capture_output=True)
    command = [str(Path(bin_dir) / "mlflow"), "run", ".", "-e", "main", "--env-manager", "local",
               "--experiment-name", "pipeline", "-P", f"profile={profile}", *extra]
    seconds, returncode, usage, peak_tree = sampled_run(command, env, log, repo)
    if returncode:
        raise SystemExit(f"main failed (exit {returncode}); see {log}")
    cpu = usage.ru_utime + usage.ru_stime
    peak_mib = usage.ru_maxrss / 1024
    parent = [line for line in log.read_text().splitlines() if "main: done in" in line]
    return seconds, cpu, peak_mib, peak_tree, parent[-1].rsplit("parent run ", 1)[1].rstrip(")") if parent else ""


def step_table(home: Path, parent_id: str) -> list[dict]:
    os.environ["MULTILOSS_HOME"] = str(home)
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    import mlflow

    from multiloss.tracking import store
    store.configure()
    client = mlflow.MlflowClient()
    with tempfile.TemporaryDirectory() as tmp:
        steps = json.loads(Path(mlflow.artifacts.download_artifacts(run_id=parent_id, artifact_path="steps.json",
                                                                    dst_path=tmp)).read_text())
    rows = []
    for name, step in steps.items():
        row = {"step": name, "how": step["how"], "seconds": 0.0, "metric": "", "span": None}
        if step["run_id"]:
            run = client.get_run(step["run_id"])
            if step["how"] == "ran":
                row["seconds"] = (run.info.end_time - run.info.start_time) / 1000
                row["span"] = (run.info.start_time / 1000, run.info.end_time / 1000)
                if run.data.tags.get(names.PROCESS_TAG):
                    row["how"] += f" ({run.data.tags[names.PROCESS_TAG]})"
            key = HEADLINE.get(step["entry_point"])
            if key and key in run.data.metrics:
                row["metric"] = f"{key} {run.data.metrics[key]:.4f}"
        rows.append(row)
    return rows


def covered_seconds(spans: list[tuple[float, float]]) -> float:
    """Wall time during which at least one step ran: steps in worker processes overlap."""
    covered, end = 0.0, float("-inf")
    for start, stop in sorted(spans):
        if stop > end:
            covered += stop - max(start, end)
            end = stop
    return covered


def cpu_ticks() -> list[int] | None:
    """The machine's CPU tick counters (/proc/stat: user ... steal), None where there is none."""
    try:
        return [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:9]]
    except (OSError, ValueError, IndexError):
        return None


def steal_share(before: list[int] | None, after: list[int] | None) -> float | None:
    """The share of CPU time the hypervisor gave to others while we ran (a virtual machine's
    `steal`): at 20 % the same pipeline takes visibly longer, whatever its code."""
    if before is None or after is None:
        return None
    spent = [b - a for a, b in zip(before, after)]
    return spent[7] / sum(spent) if sum(spent) else 0.0


def markdown(rows: list[dict], total: float, cpu: float, peak_mib: float, loads: tuple,
             steal: float | None = None, peak_all_mib: float | None = None) -> str:
    lines = ["| step | ran / reused (where) | seconds | headline |", "|---|---|---:|---|"]
    lines += [f"| {r['step']} | {r['how']} | {r['seconds']:.1f} | {r['metric']} |" for r in rows]
    in_steps = covered_seconds([r["span"] for r in rows if r["span"]])
    lines += [f"| (steps' own seconds, summed over processes) | | {sum(r['seconds'] for r in rows):.1f} | |",
              f"| (wall time with a step running) | | {in_steps:.1f} | |",
              f"| (outside steps: imports, fingerprints, launcher) | | {total - in_steps:.1f} | |",
              f"| **total** | | **{total:.1f}** | target {TARGET_SECONDS} s: "
              f"{'met' if total <= TARGET_SECONDS else 'MISSED'} |"]
    lines.append(f"\nCPU time of the pipeline processes: {cpu:.0f} s; peak memory: "
                 + (f"{peak_all_mib:.0f} MiB all processes together (PSS), " if peak_all_mib else "")
                 + f"{peak_mib:.0f} MiB the largest process; load average before/after: {loads[0]:.2f} / {loads[1]:.2f} "
                 f"on {os.cpu_count()} CPUs (other work on the machine slows every step)"
                 + (f"; CPU steal (time the host gave to other machines) {steal:.1%}" if steal is not None else ""))
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--home", type=Path, help="MULTILOSS_HOME to use (default: a new folder under bench/out); "
                                                  "with several --workers values, one sub-folder each")
    parser.add_argument("--profile", default="demo")
    parser.add_argument("--runs", type=int, default=2, help="2: also time the rerun, which should reuse every step")
    parser.add_argument("--workers", default="", help="e.g. 1,2: the pipeline once per value, one after the other, "
                                                      "each in its own fresh home, then the ratio of their times")
    parser.add_argument("extra", nargs="*", help="more `mlflow run` arguments after --, e.g. -P seeds=0,1")
    args = parser.parse_args(argv)
    home = args.home or Path(tempfile.mkdtemp(prefix="demo-home-", dir=REPO / "bench" / "out"))
    counts = [int(v) for v in args.workers.split(",") if v.strip()]
    settings = [(home / f"workers-{n}", ["-P", f"workers={n}"]) for n in counts] if counts else [(home, [])]
    first_totals = {}
    for (folder, workers), count in zip(settings, counts or [None]):
        folder.mkdir(parents=True, exist_ok=True)
        for attempt in range(1, args.runs + 1):
            before, ticks = os.getloadavg()[0], cpu_ticks()
            total, cpu, peak_mib, peak_all_mib, parent = launch(folder, args.profile, [*workers, *args.extra],
                                                                folder / f"main-{attempt}.log")
            steal = steal_share(ticks, cpu_ticks())
            rows = step_table(folder, parent)
            first_totals.setdefault(count, total)
            print(f"\n## run {attempt} ({args.profile}{f', workers {count}' if count else ''}, home {folder}, "
                  f"parent run {parent})\n")
            print(markdown(rows, total, cpu, peak_mib, (before, os.getloadavg()[0]), steal, peak_all_mib), flush=True)
    if len(counts) > 1:
        base = first_totals[counts[0]]
        print("\n" + "; ".join(f"workers {n}: {first_totals[n]:.0f} s ({first_totals[n] / base:.2f} of workers "
                                f"{counts[0]})" for n in counts))


if __name__ == "__main__":
    main()
