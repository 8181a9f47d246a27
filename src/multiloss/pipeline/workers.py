"""Worker processes that run pipeline steps beside the main process.

A step's graph building is single-threaded and its small-batch training leaves CPU cores idle, so
two steps at once finish sooner than two in a row (bench/demo_pipeline.py --workers 1,2 measures
it). Each worker is a fresh Python started with ``spawn`` (TensorFlow's threads do not survive a
``fork``): it imports TensorFlow once, runs the steps it is given one at a time, and dies with its
parent, even a parent killed by SIGKILL. The module knows nothing of MLflow: the parent says what
to run, and what to do once at start.
"""

from __future__ import annotations

import ctypes
import io
import multiprocessing
import os
import signal
import sys
import threading
import traceback
from collections.abc import Callable

_PR_SET_PDEATHSIG = 1       # linux/prctl.h
_ENVIRON = threading.Lock()  # one worker's variables in os.environ at a time


class WorkerError(RuntimeError):
    """What a worker raised, with its traceback as the message (exceptions need not pickle)."""


class WorkerDied(RuntimeError):
    """The worker process ended (killed, out of memory) before answering."""


class Worker:
    """One spawned process: :meth:`call` runs a module-level function there and returns its result.

    ``env``: variables the process starts with, beside ours (its GPU: :mod:`multiloss.team.gpus`),
    there before it imports anything, since CUDA reads its devices once."""

    def __init__(self, number: int, setup: Callable[[], None] | None = None, env: dict[str, str] | None = None):
        context = multiprocessing.get_context("spawn")
        self.number = number
        self.env = dict(env or {})
        self._conn, child_end = context.Pipe()
        self.process = context.Process(target=_serve, args=(child_end, number, os.getpid(), setup),
                                       name=f"worker {number}")
        with _ENVIRON:      # spawn passes this process's environment: ours, the worker's on top, for the start
            saved = {key: os.environ.get(key) for key in env or {}}
            os.environ.update(env or {})
            try:
                self.process.start()
            finally:
                for key, value in saved.items():
                    if value is None:
                        os.environ.pop(key, None)
                    else:
                        os.environ[key] = value
        child_end.close()

    def call(self, function: Callable, *args):
        """``function(*args)`` in the worker; raises :class:`WorkerError` with the worker's
        traceback if it raised, :class:`WorkerDied` if the process ended first."""
        try:
            self._conn.send((function, args))
            ok, value = self._conn.recv()
        except (EOFError, OSError):
            self.process.join(5)
            raise WorkerDied(f"worker {self.number} (process {self.process.pid}) ended with exit code "
                             f"{self.process.exitcode} before its step did") from None
        if not ok:
            raise WorkerError(f"in worker {self.number} (process {self.process.pid}):\n{value}")
        return value

    def close(self, timeout: float = 30) -> None:
        """Ask the worker to stop after its current call; kill it if it has not within ``timeout``."""
        try:
            self._conn.send(None)
        except OSError:
            pass
        self.process.join(timeout)
        if self.process.is_alive():
            self.kill()
        self._conn.close()

    def kill(self) -> None:
        if self.process.is_alive():
            self.process.kill()
        self.process.join(10)
        self._conn.close()


class _Prefixed(io.TextIOBase):
    """A text stream that starts each line with ``prefix``: two processes share the terminal."""

    def __init__(self, stream, prefix: str):
        self._stream, self._prefix, self._at_line_start = stream, prefix, True

    def write(self, text: str) -> int:
        out = []
        for piece in text.splitlines(keepends=True):
            if self._at_line_start:
                out.append(self._prefix)
            out.append(piece)
            self._at_line_start = piece.endswith("\n")
        self._stream.write("".join(out))
        return len(text)

    def flush(self) -> None:
        self._stream.flush()

    def fileno(self) -> int:
        return self._stream.fileno()

    def isatty(self) -> bool:
        return self._stream.isatty()


def _die_with_parent(parent_pid: int) -> None:
    """Have the kernel kill this process when its parent dies (Linux; elsewhere a no-op)."""
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent_pid:          # the parent died before the line above
        os._exit(1)


def _serve(conn, number: int, parent_pid: int, setup: Callable[[], None] | None) -> None:
    _die_with_parent(parent_pid)
    signal.signal(signal.SIGINT, signal.SIG_IGN)       # Ctrl-C reaches the whole group: the parent decides
    sys.stdout = _Prefixed(sys.stdout, f"[worker {number}] ")
    sys.stderr = _Prefixed(sys.stderr, f"[worker {number}] ")
    if setup is not None:
        setup()
    while True:
        try:
            message = conn.recv()
        except EOFError:
            return
        if message is None:
            return
        function, args = message
        try:
            answer = (True, function(*args))
        except BaseException:                           # noqa: BLE001 - everything goes back to the parent
            answer = (False, traceback.format_exc())
        sys.stdout.flush()
        sys.stderr.flush()
        try:
            conn.send(answer)
        except Exception:                               # noqa: BLE001 - an answer that does not pickle
            conn.send((False, traceback.format_exc()))
