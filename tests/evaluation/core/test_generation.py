from __future__ import annotations

import pickle
import random
import threading
from concurrent.futures import ThreadPoolExecutor
from email.utils import formatdate

import pytest

from evaluation.core.generation import (
    ChatRequest,
    CircuitBreaker,
    CircuitOpenError,
    GenerationError,
    RetryPolicy,
    parse_retry_after,
)


class MaxRandom(random.Random):
    """An rng whose uniform(a, b) always returns b, to see the top of the jitter range."""

    def uniform(self, a: float, b: float) -> float:
        return b


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def waited_out_breaker(failure_threshold: int = 1, reset_after_s: float = 10.0) -> tuple[CircuitBreaker, FakeClock]:
    """A breaker on a fake clock that failed `failure_threshold` times in a row and then waited `reset_after_s`."""
    clock = FakeClock()
    breaker = CircuitBreaker(failure_threshold=failure_threshold, reset_after_s=reset_after_s, clock=clock)
    for _ in range(failure_threshold):
        breaker.record_failure()
    clock.now += reset_after_s
    return breaker, clock


def test_it_sends_only_the_sampling_params_that_are_set() -> None:
    request = ChatRequest(model="m", messages=({"role": "user", "content": "hi"},), n=2, temperature=0.0,
                          seed=7, stop=("\n",))
    assert request.params() == {"n": 2, "temperature": 0.0, "seed": 7, "stop": ["\n"]}
    assert request.payload() == {"model": "m", "messages": [{"role": "user", "content": "hi"}],
                                 "n": 2, "temperature": 0.0, "seed": 7, "stop": ["\n"]}


def test_it_rejects_a_request_for_no_choices() -> None:
    with pytest.raises(ValueError, match="n must be at least 1"):
        ChatRequest(model="m", messages=({"role": "user", "content": "hi"},), n=0)


def test_backoff_caps_grow_exponentially_up_to_max_delay() -> None:
    policy = RetryPolicy(base_delay_s=0.5, max_delay_s=3.0)
    caps = [policy.delay_s(attempt, retry_after_s=None, rng=MaxRandom()) for attempt in range(1, 7)]
    assert caps == [0.5, 1.0, 2.0, 3.0, 3.0, 3.0]
    assert policy.delay_s(10_000, retry_after_s=None, rng=MaxRandom()) == 3.0


def test_jitter_stays_within_zero_and_the_cap() -> None:
    policy = RetryPolicy(base_delay_s=0.5, max_delay_s=30.0)
    rng = random.Random(1)
    delays = [policy.delay_s(3, retry_after_s=None, rng=rng) for _ in range(500)]
    assert all(0.0 <= d <= 2.0 for d in delays)
    assert max(delays) > 1.5 and min(delays) < 0.5  # spread over the range, not stuck at one end


def test_jitter_is_reproducible_with_a_seeded_rng() -> None:
    policy = RetryPolicy()
    first = [policy.delay_s(a, retry_after_s=None, rng=random.Random(42)) for a in range(1, 5)]
    second = [policy.delay_s(a, retry_after_s=None, rng=random.Random(42)) for a in range(1, 5)]
    assert first == second


def test_retry_after_is_a_minimum_with_a_little_jitter() -> None:
    policy = RetryPolicy(base_delay_s=0.5, max_delay_s=0.1)
    rng = random.Random(3)
    delays = [policy.delay_s(1, retry_after_s=2.0, rng=rng) for _ in range(200)]
    assert all(2.0 <= d <= 2.5 for d in delays)


def test_retry_policy_rejects_zero_attempts() -> None:
    with pytest.raises(ValueError, match="max_attempts"):
        RetryPolicy(max_attempts=0)


def test_it_reads_retry_after_as_seconds_or_http_date() -> None:
    assert parse_retry_after("3") == 3.0
    assert parse_retry_after(" 1.5 ") == 1.5
    assert parse_retry_after("-4") == 0.0
    now = 1_700_000_000.0
    assert parse_retry_after(formatdate(now + 30, usegmt=True), now=now) == pytest.approx(30.0)
    assert parse_retry_after(formatdate(now - 30, usegmt=True), now=now) == 0.0
    assert parse_retry_after("soon") is None
    assert parse_retry_after("nan") is None
    assert parse_retry_after(None) is None


def test_breaker_opens_after_threshold_consecutive_failures() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(failure_threshold=3, reset_after_s=10.0, clock=clock)
    for _ in range(2):
        assert breaker.allow()
        breaker.record_failure()
    assert breaker.state == "closed"
    breaker.record_failure()
    assert breaker.state == "open"
    assert not breaker.allow()
    assert breaker.retry_in_s() == 10.0
    clock.now += 4
    assert not breaker.allow()
    assert breaker.retry_in_s() == 6.0


def test_a_success_resets_the_count_of_consecutive_failures() -> None:
    breaker = CircuitBreaker(failure_threshold=2, clock=FakeClock())
    breaker.record_failure()
    breaker.record_success()
    breaker.record_failure()
    assert breaker.state == "closed"


def test_half_open_breaker_lets_exactly_one_trial_through() -> None:
    breaker, _ = waited_out_breaker()
    assert breaker.state == "half_open"
    assert breaker.retry_in_s() == 0.0
    assert breaker.allow()
    assert not breaker.allow()
    assert not breaker.allow()
    assert breaker.retry_in_s() == 10.0


def test_a_successful_trial_closes_the_breaker() -> None:
    breaker, _ = waited_out_breaker()
    assert breaker.allow()
    breaker.record_success()
    assert breaker.state == "closed"
    assert all(breaker.allow() for _ in range(5))


def test_a_failed_trial_reopens_the_breaker_for_another_wait() -> None:
    breaker, clock = waited_out_breaker(failure_threshold=3)
    assert breaker.allow()
    breaker.record_failure()  # one failure is enough in half-open state
    assert breaker.state == "open"
    assert not breaker.allow()
    clock.now += 9.5
    assert not breaker.allow()
    clock.now += 0.5
    assert breaker.allow()


def test_a_released_trial_lets_the_next_one_through() -> None:
    breaker, _ = waited_out_breaker()
    assert breaker.allow()
    breaker.release()  # e.g. the trial got a 429: no verdict on the endpoint
    assert breaker.state == "half_open"
    assert breaker.allow()
    assert not breaker.allow()


def test_a_trial_that_never_reports_stops_blocking_after_another_wait() -> None:
    breaker, clock = waited_out_breaker()
    assert breaker.allow()
    clock.now += 10
    assert breaker.allow()


def test_breaker_counts_failures_from_many_threads_exactly() -> None:
    breaker = CircuitBreaker(failure_threshold=400, reset_after_s=60.0)
    start = threading.Barrier(8)

    def fail(_: int) -> None:
        start.wait()
        for _ in range(50):
            breaker.record_failure()

    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(fail, range(8)))
    assert breaker.state == "open"  # exactly 400 failures reached the threshold; a lost update would not


def test_half_open_breaker_lets_one_of_many_threads_through() -> None:
    breaker, _ = waited_out_breaker(reset_after_s=5.0)
    start = threading.Barrier(16)

    def try_once(_: int) -> bool:
        start.wait()
        return breaker.allow()

    with ThreadPoolExecutor(max_workers=16) as pool:
        allowed = list(pool.map(try_once, range(16)))
    assert allowed.count(True) == 1


def test_generation_errors_say_whether_retrying_may_help() -> None:
    assert GenerationError("server_error", "boom").retryable
    assert not GenerationError("client_error", "bad request", status_code=400).retryable
    error = CircuitOpenError("open", retry_in_s=3.0)
    assert error.kind == "circuit_open" and error.retry_in_s == 3.0 and error.retryable
    assert str(error) == "open"
    with pytest.raises(ValueError, match="unknown kind"):
        GenerationError("oops", "x")


def test_generation_errors_survive_pickling() -> None:
    error = pickle.loads(pickle.dumps(GenerationError("rate_limited", "slow down", status_code=429, attempts=3)))
    assert (error.kind, error.message, error.status_code, error.attempts, error.retryable) == (
        "rate_limited", "slow down", 429, 3, True)
    assert str(error) == "slow down"
    opened = pickle.loads(pickle.dumps(CircuitOpenError("open", retry_in_s=2.5, attempts=1)))
    assert isinstance(opened, CircuitOpenError) and opened.retry_in_s == 2.5
