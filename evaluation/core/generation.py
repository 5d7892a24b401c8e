"""Chat-completion requests and replies, the LLMClient Protocol, retry backoff and a circuit breaker. No network."""
from __future__ import annotations

import email.utils
import math
import random
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

# Kinds of failure that say the endpoint itself is unwell; only these count toward opening the circuit.
# A 429 means "alive but busy" and a 4xx means "this request is wrong", so neither trips it.
BREAKER_KINDS = frozenset({"connect", "timeout", "server_error", "malformed"})
_RETRYABLE_KINDS = frozenset({"connect", "timeout", "rate_limited", "server_error", "malformed", "circuit_open"})
KINDS = (*sorted(_RETRYABLE_KINDS), "client_error")


@dataclass(frozen=True)
class ChatRequest:
    model: str
    messages: tuple[Mapping[str, str], ...]  # ({"role": "user", "content": "..."},)
    n: int = 1
    temperature: float | None = None
    top_p: float | None = None
    max_tokens: int | None = None
    seed: int | None = None
    stop: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.n < 1:
            raise ValueError(f"n must be at least 1, not {self.n}")
        if not self.messages:
            raise ValueError("messages must not be empty")

    def params(self) -> dict[str, Any]:
        """Return the sampling parameters as sent, leaving out those that are unset."""
        params: dict[str, Any] = {"n": self.n}
        for name in ("temperature", "top_p", "max_tokens", "seed"):
            value = getattr(self, name)
            if value is not None:
                params[name] = value
        if self.stop:
            params["stop"] = list(self.stop)
        return params

    def payload(self) -> dict[str, Any]:
        """Return the JSON body for POST /chat/completions."""
        return {"model": self.model, "messages": [dict(m) for m in self.messages], **self.params()}


@dataclass(frozen=True)
class Choice:
    text: str
    finish_reason: str  # "stop", "length", ... ("" if the server gave none)


@dataclass(frozen=True)
class Completion:
    choices: tuple[Choice, ...]  # exactly request.n choices
    prompt_tokens: int | None  # the prompt's size as the server counted it (first reply)
    completion_tokens: int | None  # summed over the requests that made it; None if any reply lacked usage
    latency_ms: float  # wall time of the whole complete() call, retries included
    attempts: int  # HTTP attempts made
    server_model: str  # "model" field of the reply


class GenerationError(Exception):
    """A chat completion failed; ``message`` says where and what happened, ``retryable`` whether trying later may help."""

    def __init__(self, kind: str, message: str, *, status_code: int | None = None, attempts: int = 1,
                 retryable: bool | None = None) -> None:
        if kind not in KINDS:
            raise ValueError(f"unknown kind {kind!r}; expected one of {', '.join(KINDS)}")
        super().__init__(message)
        self.kind = kind
        self.message = message
        self.status_code = status_code
        self.attempts = attempts
        self.retryable = kind in _RETRYABLE_KINDS if retryable is None else retryable

    def __reduce__(self) -> tuple[Any, ...]:
        # Exceptions pickle through self.args, which would lose the keyword-only fields (Celery pickles errors).
        return (_rebuild_error, (type(self), self.__dict__.copy()))

    def __repr__(self) -> str:
        return f"{type(self).__name__}(kind={self.kind!r}, attempts={self.attempts}, message={self.message!r})"


class CircuitOpenError(GenerationError):
    """The endpoint failed repeatedly, so no request was sent; try again in ``retry_in_s`` seconds."""

    def __init__(self, message: str, *, retry_in_s: float, attempts: int = 0) -> None:
        super().__init__("circuit_open", message, attempts=attempts)
        self.retry_in_s = retry_in_s


def _rebuild_error(cls: type[GenerationError], state: dict[str, Any]) -> GenerationError:
    error = cls.__new__(cls)
    Exception.__init__(error, state["message"])
    error.__dict__.update(state)
    return error


class LLMClient(Protocol):
    def complete(self, request: ChatRequest) -> Completion: ...


@dataclass(frozen=True)
class RetryPolicy:
    max_attempts: int = 4  # total attempts, first included
    base_delay_s: float = 0.5
    max_delay_s: float = 30.0
    max_retry_after_s: float = 60.0  # a longer Retry-After is not waited for: fail with rate_limited

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError(f"max_attempts must be at least 1, not {self.max_attempts}")
        if min(self.base_delay_s, self.max_delay_s, self.max_retry_after_s) < 0:
            raise ValueError("delays must not be negative")

    def delay_s(self, attempt: int, *, retry_after_s: float | None, rng: random.Random) -> float:
        """Return how long to wait after failed attempt number ``attempt`` (1-based) before the next one.

        Without Retry-After: full jitter, uniform in [0, min(max_delay_s, base_delay_s * 2**(attempt-1))].
        With Retry-After: that many seconds plus up to min(base_delay_s, 1 s) of jitter, so that clients
        told the same instant do not all return at once.
        """
        if attempt < 1:
            raise ValueError(f"attempt is 1-based, not {attempt}")
        if retry_after_s is not None:
            return max(0.0, retry_after_s) + rng.uniform(0.0, min(self.base_delay_s, 1.0))
        # min() before the power would overflow for large attempt numbers.
        cap = min(self.max_delay_s, self.base_delay_s * 2.0 ** min(attempt - 1, 62))
        return rng.uniform(0.0, cap)


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """Return the seconds a Retry-After header asks to wait (delta-seconds or HTTP-date), or None if unusable."""
    if value is None:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:  # RFC 9110 dates are GMT; a naive result means the zone was "-0000"
            return None
        seconds = when.timestamp() - (time.time() if now is None else now)
    if not math.isfinite(seconds):
        return None
    return max(0.0, seconds)


class CircuitBreaker:
    """Stop calling an endpoint after ``failure_threshold`` consecutive failures; probe it again after ``reset_after_s``.

    A half-open breaker lets one trial through. A trial that never reports back (its caller released it
    with ``release`` or died) stops blocking the next trial after another ``reset_after_s``. ``on_change`` is
    called with the new state after each change (an open breaker turns half-open when a request asks for it).
    """

    def __init__(self, *, failure_threshold: int = 5, reset_after_s: float = 30.0,
                 clock: Callable[[], float] = time.monotonic,
                 on_change: Callable[[str], None] | None = None) -> None:
        if failure_threshold < 1:
            raise ValueError(f"failure_threshold must be at least 1, not {failure_threshold}")
        self.failure_threshold = failure_threshold
        self.reset_after_s = reset_after_s
        self._clock = clock
        self.on_change = on_change
        self._lock = threading.Lock()
        self._state = "closed"
        self._failures = 0
        self._opened_at = 0.0
        self._trial_started_at: float | None = None

    @property
    def state(self) -> str:
        """Return "closed", "open" or "half_open" (an open breaker whose wait is over is half-open)."""
        with self._lock:
            if self._state == "open" and self._clock() - self._opened_at >= self.reset_after_s:
                return "half_open"
            return self._state

    def allow(self) -> bool:
        """Return whether a request may go out now; in half-open state only one trial at a time may."""
        with self._lock:
            now = self._clock()
            if self._state == "closed":
                return True
            if self._state == "open":
                if now - self._opened_at < self.reset_after_s:
                    return False
                self._state = "half_open"
                self._changed("open")
            if self._trial_started_at is not None and now - self._trial_started_at < self.reset_after_s:
                return False
            self._trial_started_at = now
            return True

    def record_success(self) -> None:
        """Close the breaker: the endpoint answered."""
        with self._lock:
            before = self._state
            self._state = "closed"
            self._failures = 0
            self._trial_started_at = None
            self._changed(before)

    def record_failure(self) -> None:
        """Count a failure; open at the threshold, or re-open if this was the half-open trial."""
        with self._lock:
            before = self._state
            now = self._clock()
            if self._state == "half_open":
                self._open(now)
            elif self._state == "closed":
                self._failures += 1
                if self._failures >= self.failure_threshold:
                    self._open(now)
            # Already open: a late failure from a request sent before it opened does not extend the wait.
            self._changed(before)

    def _changed(self, before: str) -> None:
        # Under the lock, so that observers see the changes in the order they happened.
        if self.on_change is not None and self._state != before:
            self.on_change(self._state)

    def release(self) -> None:
        """End an attempt that says nothing about the endpoint's health (a 429, a 4xx): free the half-open trial."""
        with self._lock:
            if self._state == "half_open":
                self._trial_started_at = None

    def retry_in_s(self) -> float:
        """Return the seconds until a request will be allowed; 0 when one is allowed now."""
        with self._lock:
            now = self._clock()
            if self._state == "closed":
                return 0.0
            if self._state == "open" and now - self._opened_at < self.reset_after_s:
                return self._opened_at + self.reset_after_s - now
            if self._trial_started_at is None:
                return 0.0
            return max(0.0, self._trial_started_at + self.reset_after_s - now)

    def _open(self, now: float) -> None:
        self._state = "open"
        self._opened_at = now
        self._trial_started_at = None
