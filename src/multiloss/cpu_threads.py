"""How many threads each TensorFlow op may use on the CPU (its intra-op pool), per process.

The count changes the numbers, not only the speed: an op split over more threads sums its parts in
another order, and a short, high-learning-rate training carries those last-bit differences into
its scores. TensorFlow's default is one thread per CPU, so the same run gives other scores on a
machine with more cores. A fixed count gives the same numbers on any CPU machine, and every
training run logs the count it ran with (:func:`logged`). At the demo's sizes one thread is also
the fastest: ops on small tensors spend more on handing work to threads than on the work, and the
independent ops of a step still run side by side (TensorFlow's inter-op pool, left at its default).

The setting lives in TensorFlow's own variable, so the pipeline's worker processes and any
``mlflow run`` started from this one inherit it.
"""

from __future__ import annotations

import os

ENV = "TF_NUM_INTRAOP_THREADS"      # TensorFlow reads it when it starts its thread pools
PARAMETER = "intra_op_threads"      # the profile's key and the runs' parameter


def check(value, where: str) -> int:
    """``value`` as a thread count: a whole number, 0 for TensorFlow's default (one per CPU)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{where} must be a whole number of threads (0: one per CPU), got {value!r}")
    return value


def schedulable_cpus() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def effective() -> int:
    """The threads an op of this process may use: the configured count, else one per CPU."""
    import tensorflow as tf

    configured = tf.config.threading.get_intra_op_parallelism_threads()
    if configured:
        return configured
    text = os.environ.get(ENV, "").strip()
    return int(text) if text.isdigit() and int(text) else schedulable_cpus()


def apply(count: int, where: str) -> None:
    """Give this process and the processes it starts ``count`` threads per op (0: leave
    TensorFlow's default). Only possible before TensorFlow starts its thread pools (its first op);
    after that, asking for another count than the one running is an error naming ``where``."""
    import tensorflow as tf

    count = check(count, where)
    if not count:
        return
    if effective() == count:
        os.environ[ENV] = str(count)
        return
    try:
        tf.config.threading.set_intra_op_parallelism_threads(count)
    except RuntimeError:
        raise ValueError(f"{where}: {count} thread(s) per op asked for, but TensorFlow already runs with "
                         f"{effective()} in this process (set {ENV}={count} before it starts)") from None
    os.environ[ENV] = str(count)


def logged() -> dict[str, int]:
    """The run parameter that records the count a training ran with."""
    return {PARAMETER: effective()}
