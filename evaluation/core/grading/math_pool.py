"""A pool of persistent worker processes that run math-verify under a time limit that holds in any thread.

math-verify's own timeout uses SIGALRM, which only works in the main thread, so the workers run it with its
timeout disabled and the parent enforces the limit: a worker that overruns is killed and replaced.
"""
from __future__ import annotations

import atexit
import json
import os
import select
import subprocess
import sys
import threading
import time
from collections import OrderedDict
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from fractions import Fraction
from pathlib import Path
from typing import Any


class LRU:
    """A small thread-safe least-recently-used cache."""

    def __init__(self, size: int) -> None:
        self._size = size
        self._data: OrderedDict[Any, Any] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: Any) -> Any:
        """Return the cached value for ``key`` or None."""
        with self._lock:
            if key not in self._data:
                return None
            self._data.move_to_end(key)
            return self._data[key]

    def put(self, key: Any, value: Any) -> None:
        """Store ``value`` under ``key``, dropping the oldest entry when full."""
        with self._lock:
            self._data[key] = value
            self._data.move_to_end(key)
            while len(self._data) > self._size:
                self._data.popitem(last=False)


# Golds repeat once per model and sample: caching keys and comparisons saves most worker calls.
# Results are pure functions of their inputs; timeouts and worker errors are never cached.
KEY_CACHE = LRU(20_000)
EQUAL_CACHE = LRU(20_000)


class WorkerTimeout(Exception):
    """The worker did not answer in time and was killed."""


class WorkerError(Exception):
    """The worker died or answered nonsense."""


_WORKER_BOOT = ("import sys; sys.path.insert(0, sys.argv[1]); "
                "from evaluation.core.grading.math_pool import serve_math_worker; serve_math_worker(int(sys.argv[2]))")
_WORKER_START_S = 60.0  # importing sympy on a busy machine; not charged to any one answer's limit
_WORKER_MEMORY_BYTES = 2 * 1024**3


class _Worker:
    """One math-verify worker process, used by one thread at a time."""

    def __init__(self) -> None:
        root = str(Path(__file__).resolve().parents[3])
        env = {**os.environ, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
        self.process = subprocess.Popen(
            [sys.executable, "-c", _WORKER_BOOT, root, str(os.getpid())], stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env, close_fds=True)
        self._buffer = b""
        self.ready = False

    def request(self, message: Mapping[str, Any], timeout_s: float) -> dict[str, Any]:
        """Send ``message`` and return the reply; raise WorkerTimeout after ``timeout_s``."""
        if not self.ready:
            hello = self._read_line(time.monotonic() + _WORKER_START_S)
            if hello is None or json.loads(hello).get("ready") is not True:
                raise WorkerError("the maths worker did not start")
            self.ready = True
        assert self.process.stdin is not None
        try:
            self.process.stdin.write(json.dumps(message).encode() + b"\n")
            self.process.stdin.flush()
        except OSError as exc:
            raise WorkerError("the maths worker exited") from exc
        line = self._read_line(time.monotonic() + timeout_s)
        if line is None:
            raise WorkerTimeout()
        reply: dict[str, Any] = json.loads(line)
        if "error" in reply:
            raise WorkerError(str(reply["error"]))
        return reply

    def _read_line(self, deadline: float) -> bytes | None:
        """Return the next line from the worker, None at the deadline; raise WorkerError at EOF."""
        assert self.process.stdout is not None
        fd = self.process.stdout.fileno()
        while b"\n" not in self._buffer:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            readable, _, _ = select.select([fd], [], [], remaining)
            if not readable:
                return None
            chunk = os.read(fd, 1 << 16)
            if not chunk:
                raise WorkerError("the maths worker exited (out of memory?)")
            self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        return line

    def kill(self) -> None:
        """Stop the process now."""
        try:
            self.process.kill()
            self.process.wait(timeout=5)
        except (OSError, subprocess.TimeoutExpired):
            pass
        for stream in (self.process.stdin, self.process.stdout):
            try:
                if stream is not None:
                    stream.close()
            except OSError:
                pass


class _MathPool:
    """Persistent math-verify workers; a worker that overruns its limit is killed and replaced."""

    def __init__(self, size: int) -> None:
        self._size = size
        self._idle: list[_Worker] = []
        self._count = 0
        self._lock = threading.Condition()
        self._pid = os.getpid()
        # Workers die with the thread that started them (PR_SET_PDEATHSIG), so one long-lived thread
        # starts them all: a caller's short-lived pool thread must not take its worker down with it.
        self._launcher = ThreadPoolExecutor(max_workers=1, thread_name_prefix="math-verify-launcher")

    def _start(self) -> _Worker:
        """Start a worker from the launcher thread."""
        return self._launcher.submit(_Worker).result()

    def call(self, message: Mapping[str, Any], timeout_s: float) -> dict[str, Any]:
        """Run ``message`` on an idle worker within ``timeout_s`` seconds of sending it."""
        worker = self._acquire()
        try:
            reply = worker.request(message, timeout_s)
        except (WorkerTimeout, WorkerError, ValueError, OSError) as exc:
            self._discard(worker)
            if isinstance(exc, (WorkerTimeout, WorkerError)):
                raise
            raise WorkerError(f"bad reply from the maths worker: {exc}") from exc
        except BaseException:
            self._discard(worker)
            raise
        self._release(worker)
        return reply

    def _acquire(self) -> _Worker:
        """Return an idle worker, starting one when under the size limit, else wait for one."""
        with self._lock:
            while True:
                if self._idle:
                    return self._idle.pop()
                if self._count < self._size:
                    self._count += 1
                    break
                self._lock.wait()
        try:
            return self._start()
        except BaseException:
            with self._lock:
                self._count -= 1
                self._lock.notify()
            raise

    def _release(self, worker: _Worker) -> None:
        """Put ``worker`` back for the next caller."""
        with self._lock:
            self._idle.append(worker)
            self._lock.notify()

    def _discard(self, worker: _Worker) -> None:
        """Kill ``worker``, whatever it is doing, and start its replacement so that it warms up meanwhile."""
        worker.kill()
        try:
            replacement: _Worker | None = self._start()
        except (OSError, RuntimeError):  # RuntimeError: the launcher is shut down at exit
            replacement = None
        with self._lock:
            if replacement is None:
                self._count -= 1
            else:
                self._idle.insert(0, replacement)  # the warm ones are handed out first
            self._lock.notify()

    def close(self) -> None:
        """Kill every idle worker (busy ones are killed by their callers' timeouts)."""
        with self._lock:
            idle, self._idle = self._idle, []
            self._count -= len(idle)
        if os.getpid() == self._pid:
            for worker in idle:
                worker.kill()
            self._launcher.shutdown(wait=False)


_POOL: _MathPool | None = None
_POOL_LOCK = threading.Lock()


def math_pool() -> _MathPool:
    """Return this process's worker pool, a fresh one after a fork."""
    global _POOL
    with _POOL_LOCK:
        if _POOL is None or _POOL._pid != os.getpid():
            # A forked child (e.g. a Celery prefork worker) must not share its parent's pipes.
            _POOL = _MathPool(size=max(1, min(4, os.cpu_count() or 1)))
        return _POOL


def _close_pool() -> None:
    """Kill the workers when the interpreter exits."""
    if _POOL is not None:
        _POOL.close()


atexit.register(_close_pool)


def serve_math_worker(parent: int) -> None:
    """Answer maths requests from stdin, one JSON line each, until stdin closes or ``parent`` dies."""
    import ctypes
    import logging
    import resource
    import signal

    # Die with the parent even in the middle of a runaway computation (the kernel sends SIGKILL).
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # 1 = PR_SET_PDEATHSIG (Linux)
    except (OSError, AttributeError):
        pass
    if os.getppid() != parent:
        return

    # Runaway expressions (9^{9^{9^9}}) eat memory as well as time: fail fast instead of swapping.
    try:
        _, hard = resource.getrlimit(resource.RLIMIT_AS)
        if hard == resource.RLIM_INFINITY or hard > _WORKER_MEMORY_BYTES:
            resource.setrlimit(resource.RLIMIT_AS, (_WORKER_MEMORY_BYTES, hard))
    except (ValueError, OSError):
        pass
    logging.disable(logging.CRITICAL)  # math-verify logs each parse failure; the parent reports them
    # Replies go to a private copy of stdout: anything a library prints must not break the protocol.
    replies = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    import sympy
    from evaluation.core.grading.math import number_key, number_value  # the parent's keys for plain numbers
    from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse, verify

    config = [LatexExtractionConfig(), ExprExtractionConfig()]
    exprs: dict[str, Any] = {}

    def read(text: str) -> tuple[str, str, Any]:
        """Return (kind, key, value) of a cleaned answer."""
        if text in exprs:
            return exprs[text]  # type: ignore[no-any-return]
        value = number_value(text)
        if value is not None:
            result: tuple[str, str, Any] = ("number", number_key(value), sympy.Rational(value.numerator,
                                                                                          value.denominator))
        else:
            # Timeouts are disabled here (they need the main thread's SIGALRM); the parent enforces them.
            parsed = parse(f"${text}$", config, parsing_timeout=None)
            expr = next((p for p in parsed if isinstance(p, (sympy.Basic, sympy.MatrixBase))), None)
            if expr is not None:
                try:
                    # latex2sympy builds unevaluated trees: 2^{10} and 1/\sqrt{2} need doit() to get
                    # the same key as 1024 and \sqrt{2}/2. A runaway doit() is what the parent's limit is for.
                    expr = expr.doit()
                except Exception:  # noqa: BLE001 - keep the unevaluated tree
                    pass
            if expr is None:
                result = ("text", " ".join(text.split()), None)
            elif isinstance(expr, sympy.Basic) and (expr.is_Rational or expr.is_Float):
                exact = Fraction(str(sympy.Rational(str(expr)) if expr.is_Float else expr))
                result = ("number", number_key(exact), sympy.Rational(exact.numerator, exact.denominator))
            else:
                result = ("expr", str(expr), expr)
        if len(exprs) > 5000:
            exprs.clear()
        exprs[text] = result
        return result

    def value_of(kind: str, key: str, text: str) -> Any:
        """Return the sympy value behind a key, so the comparison depends on the key alone."""
        if kind == "number":
            exact = Fraction(key)
            denominator = exact.denominator
            while denominator % 2 == 0:
                denominator //= 2
            while denominator % 5 == 0:
                denominator //= 5
            if exact.denominator > 1 and denominator == 1:
                # A terminating decimal may be a rounded irrational: let math-verify compare it as a float.
                return sympy.Float(sympy.Rational(exact.numerator, exact.denominator), 30)
            return sympy.Rational(exact.numerator, exact.denominator)
        return read(text)[2]

    replies.write(json.dumps({"ready": True}) + "\n")
    replies.flush()
    for line in sys.stdin:
        try:
            message = json.loads(line)
            if message["op"] == "key":
                kind, key, _ = read(message["text"])
                reply: dict[str, Any] = {"kind": kind, "key": key}
            else:
                gold = value_of(*message["gold"])
                answer = value_of(*message["answer"])
                equal = gold is not None and answer is not None and verify(gold, answer, timeout_seconds=None)
                reply = {"equal": bool(equal)}
        except MemoryError:
            reply = {"error": "out of memory"}
        except Exception as exc:  # noqa: BLE001 - report it and keep serving
            reply = {"error": f"{type(exc).__name__}: {exc}"[:200]}
        replies.write(json.dumps(reply) + "\n")
        replies.flush()
