"""Micro-batching of embedding calls from many threads. Runs with `-p no:django`; nothing here asserts timings."""
from __future__ import annotations

import threading
from collections.abc import Callable

import numpy as np
import pytest
from numpy.typing import NDArray

from routing.core.batching import MicroBatcher


class FakeEmbed:
    """Rows that encode the text (its number and length); records every batch; optionally blocks or fails."""

    def __init__(self, *, fail_on: str | None = None) -> None:
        self.batches: list[list[str]] = []
        self.fail_on = fail_on
        self.gate = threading.Event()  # while cleared, a batch blocks inside the embed function
        self.gate.set()
        self.entered = threading.Event()
        self._lock = threading.Lock()

    def __call__(self, texts: list[str]) -> NDArray[np.float32]:
        with self._lock:
            self.batches.append(list(texts))
        self.entered.set()
        self.gate.wait(timeout=10)
        if self.fail_on is not None and self.fail_on in texts:
            raise ValueError(f"cannot embed {self.fail_on}")
        return np.array([[float(text.split("-")[-1]), float(len(text))] for text in texts], dtype=np.float32)


def run_threads(count: int, target: Callable[[int], None]) -> None:
    threads = [threading.Thread(target=target, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=20)
        assert not thread.is_alive(), "a caller never returned"


def block_first_batch(fake: FakeEmbed, batcher: MicroBatcher) -> threading.Thread:
    """Start a lone call that holds the embed function until fake.gate is set; return its thread."""
    fake.gate.clear()
    thread = threading.Thread(target=batcher.embed_one, args=("q-999",))
    thread.start()
    assert fake.entered.wait(timeout=10)
    return thread


def embed_concurrently(fake: FakeEmbed, batcher: MicroBatcher, count: int, call: Callable[[int], None]) -> None:
    """Hold a first batch, start `count` threads running call(i) that queue behind it, then release and join all."""
    first = block_first_batch(fake, batcher)
    threads = [threading.Thread(target=call, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    wait_queued(batcher, count)
    fake.gate.set()
    for thread in [first, *threads]:
        thread.join(timeout=20)


def wait_queued(batcher: MicroBatcher, count: int) -> None:
    for _ in range(2000):
        with batcher._lock:  # test-only peek: how many texts wait for the next batch
            if len(batcher._pending) >= count:
                return
        threading.Event().wait(0.005)
    raise AssertionError(f"fewer than {count} texts queued")


def test_a_lone_call_is_embedded_at_once_in_a_batch_of_one() -> None:
    fake = FakeEmbed()
    batcher = MicroBatcher(fake, max_batch=8, max_wait_ms=50)
    row = batcher.embed_one("q-7")
    assert row.tolist() == [7.0, 3.0]
    assert fake.batches == [["q-7"]]
    stats = batcher.stats()
    assert (stats.batches, stats.items, stats.largest, stats.failed) == (1, 1, 1, 0)


def test_calls_that_arrive_while_a_batch_runs_go_together_into_the_next_one() -> None:
    fake = FakeEmbed()
    batcher = MicroBatcher(fake, max_batch=32, max_wait_ms=0)
    results: dict[int, list[float]] = {}

    def call(i: int) -> None:
        results[i] = batcher.embed_one(f"q-{i}").tolist()

    embed_concurrently(fake, batcher, 20, call)
    assert [len(batch) for batch in fake.batches] == [1, 20]
    assert results == {i: [float(i), float(len(f"q-{i}"))] for i in range(20)}
    assert batcher.stats().mean_batch == pytest.approx(10.5)


def test_no_batch_is_larger_than_max_batch() -> None:
    fake = FakeEmbed()
    batcher = MicroBatcher(fake, max_batch=4, max_wait_ms=0)
    results: dict[int, float] = {}

    def call(i: int) -> None:
        results[i] = float(batcher.embed_one(f"q-{i}")[0])

    embed_concurrently(fake, batcher, 10, call)
    assert [len(batch) for batch in fake.batches] == [1, 4, 4, 2]
    assert results == {i: float(i) for i in range(10)}
    assert batcher.stats().largest == 4


def test_many_threads_each_get_their_own_rows() -> None:
    fake = FakeEmbed()
    batcher = MicroBatcher(fake, max_batch=8, max_wait_ms=1)
    results: dict[int, NDArray[np.float32]] = {}

    def call(i: int) -> None:
        for j in range(25):
            n = i * 1000 + j
            if j % 5 == 0:
                rows = batcher.embed_many([f"q-{n}", f"longer-{n + 500}"])
                assert rows.shape == (2, 2)
                assert rows[1, 0] == n + 500
                row = rows[0]
            else:
                row = batcher.embed_one(f"q-{n}")
            results[n] = row

    run_threads(16, call)
    assert len(results) == 16 * 25
    assert all(row[0] == n and row[1] == len(f"q-{n}") for n, row in results.items())
    assert all(len(batch) <= 8 for batch in fake.batches)
    stats = batcher.stats()
    assert stats.items == 16 * 25 + 16 * 5 == sum(len(batch) for batch in fake.batches)
    assert stats.batches == len(fake.batches)


def test_a_call_with_more_texts_than_max_batch_is_cut_across_batches() -> None:
    fake = FakeEmbed()
    batcher = MicroBatcher(fake, max_batch=3, max_wait_ms=0)
    rows = batcher.embed_many([f"q-{i}" for i in range(8)])
    assert rows[:, 0].tolist() == [float(i) for i in range(8)]
    assert [len(batch) for batch in fake.batches] == [3, 3, 2]


def test_an_empty_call_returns_no_rows_and_runs_nothing() -> None:
    fake = FakeEmbed()
    batcher = MicroBatcher(fake)
    assert batcher.embed_many([]).shape[0] == 0
    assert fake.batches == []


def test_an_error_reaches_every_caller_of_that_batch_and_no_one_else() -> None:
    fake = FakeEmbed(fail_on="q-3")
    batcher = MicroBatcher(fake, max_batch=32, max_wait_ms=0)
    outcomes: dict[int, str] = {}

    def call(i: int) -> None:
        try:
            batcher.embed_one(f"q-{i}")
            outcomes[i] = "ok"
        except ValueError as exc:
            outcomes[i] = str(exc)

    embed_concurrently(fake, batcher, 6, call)
    assert outcomes == {i: "cannot embed q-3" for i in range(6)}
    assert batcher.stats().failed == 1
    # The batcher is still usable: the next call runs its own batch.
    assert batcher.embed_one("q-5").tolist() == [5.0, 3.0]


def test_a_failure_never_leaves_callers_waiting() -> None:
    fake = FakeEmbed(fail_on="q-0")
    batcher = MicroBatcher(fake, max_batch=2, max_wait_ms=1)
    failures = 0
    lock = threading.Lock()

    def call(i: int) -> None:
        nonlocal failures
        for j in range(20):
            try:
                batcher.embed_one(f"q-{(i + j) % 7}")
            except ValueError:
                with lock:
                    failures += 1

    run_threads(12, call)
    assert failures > 0
    assert batcher.stats().items == sum(len(batch) for batch in fake.batches)


def test_rows_of_the_wrong_shape_are_an_error_for_the_callers() -> None:
    batcher = MicroBatcher(lambda texts: np.zeros((len(texts) + 1, 3), dtype=np.float32))
    with pytest.raises(RuntimeError, match="shape"):
        batcher.embed_one("q-1")


def test_a_leader_waits_for_announced_requests_and_takes_them_along() -> None:
    fake = FakeEmbed()
    batcher = MicroBatcher(fake, max_batch=8, max_wait_ms=10_000)  # the wait ends when the others arrive
    release = threading.Event()
    results: dict[int, float] = {}
    announced = threading.Barrier(3)

    def call(i: int) -> None:
        with batcher.track():
            announced.wait(timeout=10)  # all three are in flight before anyone embeds
            if i != 0:
                release.wait(timeout=10)  # the late ones arrive only after the leader started waiting
            results[i] = float(batcher.embed_one(f"q-{i}")[0])

    threads = [threading.Thread(target=call, args=(i,)) for i in range(3)]
    for thread in threads:
        thread.start()
    wait_queued(batcher, 1)
    release.set()
    for thread in threads:
        thread.join(timeout=20)
        assert not thread.is_alive()
    assert results == {0: 0.0, 1: 1.0, 2: 2.0}
    assert [sorted(batch) for batch in fake.batches] == [["q-0", "q-1", "q-2"]]


def test_a_request_that_leaves_without_embedding_ends_the_leaders_wait() -> None:
    fake = FakeEmbed()
    batcher = MicroBatcher(fake, max_batch=8, max_wait_ms=10_000)
    announced = threading.Barrier(2)
    leader_queued = threading.Event()

    def refused() -> None:
        with batcher.track():
            announced.wait(timeout=10)
            leader_queued.wait(timeout=10)  # leaves (e.g. refused by auth) while the leader waits for it

    other = threading.Thread(target=refused)
    other.start()
    with batcher.track():
        announced.wait(timeout=10)
        threading.Thread(target=lambda: (wait_queued(batcher, 1), leader_queued.set())).start()
        row = batcher.embed_one("q-4")
    other.join(timeout=20)
    assert row[0] == 4.0
    assert fake.batches == [["q-4"]]


def test_without_announcements_a_lone_call_never_waits_for_companions() -> None:
    fake = FakeEmbed()
    # An hour-long window: the test would hang if a lone caller waited for it.
    batcher = MicroBatcher(fake, max_batch=8, max_wait_ms=3_600_000)
    assert batcher.embed_one("q-1")[0] == 1.0
    with batcher.track():
        assert batcher.embed_one("q-2")[0] == 2.0
    assert fake.batches == [["q-1"], ["q-2"]]


def test_it_rejects_bad_bounds() -> None:
    with pytest.raises(ValueError):
        MicroBatcher(lambda texts: np.zeros((len(texts), 1), dtype=np.float32), max_batch=0)
    with pytest.raises(ValueError):
        MicroBatcher(lambda texts: np.zeros((len(texts), 1), dtype=np.float32), max_wait_ms=-1)
