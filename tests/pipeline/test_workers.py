"""Worker processes: calls, errors, a worker that dies, and a worker that dies with its parent."""

import io
import math
import operator
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from multiloss.pipeline.workers import Worker, WorkerDied, WorkerError, _Prefixed


def mark_setup_ran() -> None:
    os.environ["WORKER_SETUP_RAN"] = "yes"


def _gone(pid: int) -> bool:
    """True once ``pid`` has exited (a zombie of ours counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


@pytest.fixture
def worker():
    started = Worker(1, mark_setup_ran)
    yield started
    started.kill()


def test_a_call_runs_in_another_process_after_the_setup(worker):
    assert worker.call(math.factorial, 5) == 120
    assert worker.call(os.getpid) == worker.process.pid != os.getpid()
    assert worker.call(os.getenv, "WORKER_SETUP_RAN") == "yes"
    assert "WORKER_SETUP_RAN" not in os.environ
    worker.close()
    assert worker.process.exitcode == 0


def test_an_error_comes_back_with_its_traceback_and_the_worker_goes_on(worker):
    with pytest.raises(WorkerError, match=r"(?s)in worker 1 \(process \d+\):.*ZeroDivisionError"):
        worker.call(operator.truediv, 1, 0)
    assert worker.call(operator.add, 2, 3) == 5


def test_a_worker_that_dies_midway_is_reported_with_its_exit_code(worker):
    with pytest.raises(WorkerDied, match=r"worker 1 \(process \d+\) ended with exit code 7"):
        worker.call(os._exit, 7)


def test_a_worker_dies_with_its_parent_even_one_killed_without_warning(tmp_path):
    # The worker is busy (an idle one would also end on its pipe's end-of-file): only the kernel's
    # parent-death signal can stop it.
    script = textwrap.dedent("""
        import os, threading, time
        from multiloss.pipeline.workers import Worker
        worker = Worker(1)
        pid = worker.call(os.getpid)
        threading.Thread(target=worker.call, args=(time.sleep, 600), daemon=True).start()
        time.sleep(1)
        print(pid, flush=True)
        time.sleep(600)
    """)
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    worker_pid = int(parent.stdout.readline())
    assert not _gone(worker_pid)
    parent.send_signal(signal.SIGKILL)
    parent.wait()
    deadline = time.monotonic() + 20
    while not _gone(worker_pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _gone(worker_pid), f"worker {worker_pid} outlived its parent"


def test_prefixed_output_marks_every_line_once_across_partial_writes():
    out = io.StringIO()
    stream = _Prefixed(out, "[w] ")
    stream.write("epoch 1")
    stream.write(" done\nepoch 2\n\nlast")
    assert out.getvalue() == "[w] epoch 1 done\n[w] epoch 2\n[w] \n[w] last"
