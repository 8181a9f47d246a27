"""Threads per op: the count a profile gives, a bad one refused before any run, and the count
reaching this process and the workers it starts (each in a fresh Python: this one's TensorFlow has
started its pools)."""

import os
import subprocess
import sys
import textwrap

import pytest
import yaml

from multiloss import cpu_threads
from multiloss.pipeline import profiles


@pytest.mark.parametrize(("value", "ok"), [(0, True), (1, True), (6, True), (-1, False), (1.5, False),
                                           ("1", False), (True, False), (None, False)])
def test_a_count_is_a_whole_number_and_a_bad_one_is_named(value, ok):
    if ok:
        assert cpu_threads.check(value, "x") == value
    else:
        with pytest.raises(ValueError, match=rf"^profile p: intra_op_threads must be a whole number of threads "
                                             rf"\(0: one per CPU\), got {value!r}"):
            cpu_threads.check(value, "profile p: intra_op_threads")


def test_the_demo_pins_one_thread_and_the_paper_keeps_tensorflows_default(tmp_path):
    assert profiles.intra_op_threads(profiles.load_profile("demo"), "demo") == 1
    assert profiles.intra_op_threads(profiles.load_profile("paper"), "paper") == 0
    with pytest.raises(ValueError, match="profile bad: intra_op_threads must be a whole number"):
        profiles.intra_op_threads({"intra_op_threads": "one"}, "bad")


def test_main_refuses_a_bad_count_before_any_run(tmp_path):
    from multiloss.stages import main

    profile = tmp_path / "bad.yaml"
    profile.write_text(yaml.safe_dump({"intra_op_threads": -2, "segment": {"losses": ["bce"]},
                                       "classify": {"losses": ["cce"]}}))
    with pytest.raises(SystemExit, match=r"main: profile .*bad\.yaml: intra_op_threads must be a whole number .*-2"):
        main.main(["--profile", str(profile)])
    assert not (tmp_path / "home" / "mlruns").exists()


def run_fresh(script: str, **env) -> list[str]:
    """``script`` in a fresh Python (its TensorFlow not started yet); its printed lines."""
    environment = {k: v for k, v in os.environ.items() if k != cpu_threads.ENV} | env
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(script)], capture_output=True, text=True,
                          env={**environment, "TF_CPP_MIN_LOG_LEVEL": "3"}, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout.splitlines()


def test_the_count_reaches_this_process_and_the_workers_it_starts_and_cannot_change_after_the_first_op():
    lines = run_fresh("""
        import os
        import tensorflow as tf
        from multiloss import cpu_threads
        from multiloss.pipeline.workers import Worker

        cpu_threads.apply(1, "profile p: intra_op_threads")
        tf.reduce_sum(tf.ones([8]))                     # TensorFlow starts its pools
        print(tf.config.threading.get_intra_op_parallelism_threads(), os.environ[cpu_threads.ENV])
        worker = Worker(1)
        print(worker.call(os.getenv, cpu_threads.ENV), worker.call(cpu_threads.effective))
        worker.close()
        cpu_threads.apply(1, "profile p: intra_op_threads")     # the count running: nothing to do
        try:
            cpu_threads.apply(2, "profile p: intra_op_threads")
        except ValueError as err:
            print(err)
        print(cpu_threads.logged())
    """)
    assert lines[:2] == ["1 1", "1 1"]
    assert lines[2] == ("profile p: intra_op_threads: 2 thread(s) per op asked for, but TensorFlow already runs "
                        "with 1 in this process (set TF_NUM_INTRAOP_THREADS=2 before it starts)")
    assert lines[3] == "{'intra_op_threads': 1}"


def test_without_a_count_tensorflow_keeps_one_thread_per_cpu_and_the_variable_is_left_alone():
    lines = run_fresh("""
        import os
        from multiloss import cpu_threads

        cpu_threads.apply(0, "x")
        print(cpu_threads.effective(), os.environ.get(cpu_threads.ENV))
    """)
    assert lines == [f"{cpu_threads.schedulable_cpus()} None"]
    assert run_fresh("from multiloss import cpu_threads; print(cpu_threads.effective())",
                     TF_NUM_INTRAOP_THREADS="3") == ["3"]
