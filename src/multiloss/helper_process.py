"""One helper process per process, for work that is pure Python (drawing figures): on a thread of
this process it would hold the interpreter lock that a training needs between its steps."""

from __future__ import annotations

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
        self.process = subprocess.Popen([sys.executable, "-c", "from multiloss import helper_process; "
                                         "helper_process.serve()"], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        self.lock = threading.Lock()

    def call(self, function: Callable, *args):
        with self.lock:
            try:
                pickle.dump((function, args), self.process.stdin)
                self.process.stdin.flush()
                ok, value = pickle.load(self.process.stdout)
            except (EOFError, OSError, pickle.UnpicklingError):
                raise RuntimeError(f"the helper process {self.process.pid} ended (exit code "
                                   f"{self._ended()}) before answering") from None
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
    """The helper's loop: a pickled ``(function, args)`` in, ``(ok, result or traceback)`` out."""
    requests, answers = sys.stdin.buffer, sys.stdout.buffer
    sys.stdout = sys.stderr              # a print in a called function must not get into the answers
    while True:
        try:
            function, args = pickle.load(requests)
        except EOFError:                 # this process's parent has ended
            return
        try:
            answer = (True, function(*args))
        except Exception:                # noqa: BLE001 - handed back to the caller, who raises it
            answer = (False, traceback.format_exc())
        pickle.dump(answer, answers)
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
