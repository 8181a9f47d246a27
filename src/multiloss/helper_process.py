"""One helper process per process, for work that is pure Python (drawing figures): on a thread of
this process it would hold the interpreter lock that a training needs between its steps."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
import threading
import traceback
from collections.abc import Callable

_starting = threading.Lock()
_helper: _Helper | None = None


class _Helper:
    """A plain Python child (``-c``: it imports only what its calls need, never TensorFlow) that
    runs module-level functions one at a time over a pipe, and ends when this process does."""

    def __init__(self):
        # this process's import path (a test's modules, a checkout on PYTHONPATH); one thread per op,
        # as the training's; its own session, so that Ctrl-C stops the caller, who then ends it
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(path for path in sys.path if path),
               "OMP_NUM_THREADS": "1"}
        self.process = subprocess.Popen([sys.executable, "-c", "from multiloss import helper_process; "
                                         "helper_process.serve()"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                        env=env, start_new_session=True)
        self.lock = threading.Lock()

    def call(self, function: Callable, *args):
        request = pickle.dumps((function, args))     # whole before a byte is sent
        with self.lock:
            try:
                self.process.stdin.write(len(request).to_bytes(8, "little") + request)
                self.process.stdin.flush()
                ok, value = pickle.load(self.process.stdout)
            except (EOFError, OSError, pickle.UnpicklingError):
                raise RuntimeError(f"the helper process {self.process.pid} ended (exit code "
                                   f"{self._ended()}) before answering") from None
            except BaseException:            # an interrupt mid-message: out of step for good
                self.process.kill()
                self.process.wait()
                raise
        if not ok:
            raise RuntimeError(f"in the helper process:\n{value}")
        return value

    def _ended(self) -> int:
        try:
            return self.process.wait(5)
        except subprocess.TimeoutExpired:     # alive but its answer was garbled: it is of no more use
            self.process.kill()
            return self.process.wait()


def serve() -> None:
    """The helper's loop: a pickled ``(function, args)`` in (its length first), ``(ok, result or
    traceback)`` out."""
    requests, answers = sys.stdin.buffer, os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)                        # what a call prints, even from C, goes to stderr, not into the answers
    sys.stdout = sys.stderr
    while True:
        size = requests.read(8)
        if len(size) < 8:                # this process's parent has ended
            return
        request = requests.read(int.from_bytes(size, "little"))
        try:
            function, args = pickle.loads(request)   # e.g. a function this process cannot import
            answer = pickle.dumps((True, function(*args)))
        except Exception:                # noqa: BLE001 - handed back to the caller, who raises it
            answer = pickle.dumps((False, traceback.format_exc()))
        answers.write(answer)
        answers.flush()


def call(function: Callable, *args):
    """``function(*args)`` (a module-level function, picklable arguments) in this process's helper
    process, started on first use and again if it has died; one call at a time."""
    global _helper
    with _starting:
        if _helper is None or _helper.process.poll() is not None:
            _helper = _Helper()
        helper = _helper
    return helper.call(function, *args)
