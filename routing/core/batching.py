"""Micro-batching: concurrent embedding calls from many threads become one call of the embed function.

Leader/follower, with at most one batch running at a time:

1. A caller that finds no batch running becomes the leader: it takes what is queued (its own texts first,
   at most ``max_batch`` texts), runs the embed function, hands each caller its rows, and passes the lead
   to the owner of the oldest text still queued, or stops when nothing is queued.
2. A caller that finds a batch running queues its texts and sleeps; texts that queue up while a batch
   runs go together into the next one. Under load the batch window is the previous batch's run time,
   without any added wait; a lone caller runs at once.
3. The leader waits for companions (at most ``max_wait_ms``, and only while the batch has room) only for
   requests announced with ``track()`` that have not reached the batcher yet, e.g. a request that is
   still being parsed. Nothing announced, no wait.

An error of the embed function (or rows of the wrong shape) is raised in every caller of that batch; the
lead is handed on in a ``finally``, so a failure never leaves queued callers asleep.
"""
from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

__all__ = ["BatcherStats", "EmbedFunction", "MicroBatcher"]

EmbedFunction = Callable[[list[str]], NDArray[np.float32]]  # n texts -> (n, d) rows, in order


@dataclass(frozen=True)
class BatcherStats:
    batches: int  # calls of the embed function
    items: int  # texts embedded (failed batches included)
    largest: int  # texts in the largest batch
    failed: int  # batches whose embed call raised or returned the wrong shape

    @property
    def mean_batch(self) -> float:
        return self.items / self.batches if self.batches else 0.0


class _Call:
    """One embed_one/embed_many call: its texts, its rows as they arrive, and how to wake its thread."""

    __slots__ = ("cond", "error", "finished", "lead", "remaining", "rows")

    def __init__(self, n: int, lock: threading.Lock) -> None:
        self.cond = threading.Condition(lock)
        self.rows: list[NDArray[np.float32] | None] = [None] * n
        self.remaining = n
        self.error: BaseException | None = None
        self.finished = False
        self.lead = False  # set by the previous leader: this thread runs the next batch


class _Item:
    __slots__ = ("call", "index", "text")

    def __init__(self, call: _Call, index: int, text: str) -> None:
        self.call = call
        self.index = index
        self.text = text


class MicroBatcher:
    """Gather concurrent ``embed_one``/``embed_many`` calls into batches of at most ``max_batch`` texts."""

    def __init__(self, embed: EmbedFunction, *, max_batch: int = 32, max_wait_ms: float = 2.0) -> None:
        if int(max_batch) < 1:
            raise ValueError(f"max_batch must be at least 1, got {max_batch}")
        if max_wait_ms < 0:
            raise ValueError(f"max_wait_ms must not be negative, got {max_wait_ms}")
        self._embed = embed
        self.max_batch = int(max_batch)
        self.max_wait_s = float(max_wait_ms) / 1000.0
        self._lock = threading.Lock()
        self._arrived = threading.Condition(self._lock)  # a waiting leader listens for newcomers
        self._pending: deque[_Item] = deque()
        self._running = False  # a leader exists (running a batch or about to)
        self._expected = 0  # requests announced with track() that have not called embed yet
        self._local = threading.local()
        self._batches = 0
        self._items = 0
        self._largest = 0
        self._failed = 0
        self._dimensions = 0  # learnt from the first batch, for empty calls

    def stats(self) -> BatcherStats:
        """Return the counters so far."""
        with self._lock:
            return BatcherStats(self._batches, self._items, self._largest, self._failed)

    @contextmanager
    def track(self) -> Iterator[None]:
        """Announce that this thread will call embed soon, so that a leader may wait for it (max_wait_ms)."""
        with self._lock:
            self._expected += 1
        self._local.announced = getattr(self._local, "announced", 0) + 1
        try:
            yield
        finally:
            # Left without embedding (e.g. the request was refused): nobody should wait for it any more.
            if self._local.announced > 0:
                self._local.announced -= 1
                with self._lock:
                    self._expected -= 1
                    self._arrived.notify()

    def embed_one(self, text: str) -> NDArray[np.float32]:
        """Return the row of one text, embedded together with whatever other threads ask for meanwhile."""
        row: NDArray[np.float32] = self.embed_many([text])[0]
        return row

    def embed_many(self, texts: Sequence[str]) -> NDArray[np.float32]:
        """Return the (len(texts), d) rows of ``texts``; they may be cut across batches of ``max_batch``."""
        texts = list(texts)
        announced = getattr(self._local, "announced", 0)
        self._local.announced = 0
        call = _Call(len(texts), self._lock)
        with self._lock:
            self._expected -= announced
            if not texts:
                return np.empty((0, self._dimensions), dtype=np.float32)
            self._pending.extend(_Item(call, i, text) for i, text in enumerate(texts))
            if self._running:
                self._arrived.notify()
            else:
                self._running = True
                call.lead = True
        while True:
            with self._lock:
                while not call.finished and not call.lead:
                    call.cond.wait()
                if call.finished:
                    break
                call.lead = False
            self._run_batch()
        if call.error is not None:
            raise call.error
        return np.stack(call.rows)  # type: ignore[arg-type]

    def _run_batch(self) -> None:
        """Take up to max_batch queued texts, embed them, deliver the rows, hand the lead on."""
        with self._lock:
            if self.max_wait_s > 0 and self._expected > 0 and len(self._pending) < self.max_batch:
                deadline = time.monotonic() + self.max_wait_s
                while self._expected > 0 and len(self._pending) < self.max_batch:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        break
                    self._arrived.wait(remaining)
            batch = [self._pending.popleft() for _ in range(min(self.max_batch, len(self._pending)))]
        rows: NDArray[np.float32] | None = None
        error: BaseException | None = None
        try:
            try:
                rows = np.asarray(self._embed([item.text for item in batch]), dtype=np.float32)
                if rows.ndim != 2 or rows.shape[0] != len(batch):
                    raise RuntimeError(f"the embed function returned shape {rows.shape} for {len(batch)} texts")
            except BaseException as exc:  # noqa: BLE001 - handed to every caller of the batch, re-raised there
                error = exc
        finally:
            self._deliver(batch, rows, error)

    def _deliver(self, batch: list[_Item], rows: NDArray[np.float32] | None, error: BaseException | None) -> None:
        with self._lock:
            self._batches += 1
            self._items += len(batch)
            self._largest = max(self._largest, len(batch))
            failed: set[int] = set()
            if error is not None or rows is None:
                self._failed += 1
                for item in batch:
                    call = item.call
                    if not call.finished:
                        call.error = error or RuntimeError("the embed function returned nothing")
                        call.finished = True
                        call.cond.notify()
                    failed.add(id(call))
            else:
                self._dimensions = int(rows.shape[1])
                for item, row in zip(batch, rows):
                    call = item.call
                    if call.finished:
                        continue
                    call.rows[item.index] = row
                    call.remaining -= 1
                    if call.remaining == 0:
                        call.finished = True
                        call.cond.notify()
            if failed:
                # A failed call raises now; its texts still queued are dropped rather than embedded for nobody.
                self._pending = deque(item for item in self._pending if id(item.call) not in failed)
            if self._pending:
                nxt = self._pending[0].call
                nxt.lead = True
                nxt.cond.notify()
            else:
                self._running = False
