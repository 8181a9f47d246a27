"""One GPU per worker process on a machine with several.

TensorFlow takes all the memory of every GPU it sees, so two processes on one machine starve each
other. A worker whose ``CUDA_VISIBLE_DEVICES`` names one device before TensorFlow starts sees that
device only (as ``/gpu:0``), and ``TF_FORCE_GPU_ALLOW_GROWTH=true`` has it take memory as it needs
it; ``workers`` can then be the number of GPUs. One process (``workers`` = 1) keeps every GPU, so
``strategy=mirrored`` still trains across all of them. Without GPUs nothing changes.

    python -m multiloss.team.gpus --workers 2 --worker 1   # CUDA_VISIBLE_DEVICES=1 TF_FORCE_GPU_ALLOW_GROWTH=true

prints the variables of one of several ``sweep`` workers, for ``env $(...) mlflow run . -e sweep ...``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from collections.abc import Mapping, Sequence

VISIBLE_ENV = "CUDA_VISIBLE_DEVICES"
GROWTH_ENV = "TF_FORCE_GPU_ALLOW_GROWTH"


def visible_gpus(environ: Mapping[str, str] | None = None) -> list[str]:
    """The GPU ids this process may hand out: those of ``CUDA_VISIBLE_DEVICES`` when it is set (CUDA
    stops at the first negative id, so ``-1`` or empty is none), else the indexes ``nvidia-smi``
    lists, else none (no driver)."""
    environ = os.environ if environ is None else environ
    given = environ.get(VISIBLE_ENV)
    if given is not None:
        ids = []
        for part in (p.strip() for p in given.split(",")):
            if not part or part.startswith("-"):
                break
            ids.append(part)
        return ids
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return []
    try:
        listed = subprocess.run([smi, "--query-gpu=index", "--format=csv,noheader"], capture_output=True,
                                text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return []
    return [line.strip() for line in listed.stdout.splitlines() if line.strip()] if listed.returncode == 0 else []


def worker_environments(workers: int, gpus: Sequence[str]) -> list[dict[str, str]]:
    """The variables each of ``workers`` processes starts with: one GPU of ``gpus`` each, in order,
    with memory growth on; nothing for a single process or without GPUs. More workers than GPUs
    are refused, naming both numbers."""
    if workers < 1:
        raise ValueError(f"workers must be at least 1, got {workers}")
    if workers == 1 or not gpus:
        return [{} for _ in range(workers)]
    if workers > len(gpus):
        raise ValueError(f"workers={workers} but {len(gpus)} GPU(s) are visible ({', '.join(gpus)}): each worker "
                         f"takes one GPU, so set workers to at most {len(gpus)} (or hide the GPUs with "
                         f"{VISIBLE_ENV}=-1 to run on the CPU)")
    return [{VISIBLE_ENV: gpu, GROWTH_ENV: "true"} for gpu in gpus[:workers]]


def apply(env: Mapping[str, str]) -> None:
    """Give this process its worker's variables; only effective before TensorFlow first lists its devices."""
    os.environ.update(env)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m multiloss.team.gpus", description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, required=True, help="how many workers share this machine")
    parser.add_argument("--worker", type=int, required=True, help="this worker's number, from 0")
    args = parser.parse_args(argv)
    try:
        environments = worker_environments(args.workers, visible_gpus())
        if not 0 <= args.worker < args.workers:
            raise ValueError(f"worker must be between 0 and workers - 1 = {args.workers - 1}, got {args.worker}")
    except ValueError as err:
        print(f"gpus: {err}", file=sys.stderr)
        return 2
    print(" ".join(f"{key}={value}" for key, value in environments[args.worker].items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
