"""Network adapters for OpenAI-compatible model servers (vLLM, llama.cpp, any /v1 endpoint)."""
from __future__ import annotations

import dataclasses
import functools
import json
import logging
import random
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
from django.conf import settings

from evaluation.core.endpoints import AllowList, describe_reply, parse_allow_list
from evaluation import metrics
from evaluation.core.generation import (
    BREAKER_KINDS,
    ChatRequest,
    Choice,
    CircuitBreaker,
    CircuitOpenError,
    Completion,
    GenerationError,
    RetryPolicy,
    parse_retry_after,
)
from evaluation.core.secrets import scrub, url_without_credentials

_log = logging.getLogger(__name__)


# --- Which endpoints may be called ------------------------------------------------------------------------------

_RESOLVE_TTL_S = 30.0
_resolved: dict[str, tuple[float, tuple[str, ...]]] = {}


@functools.lru_cache(maxsize=8)
def _allow_list(text: str) -> AllowList:
    return parse_allow_list(text)


def _resolve(host: str) -> tuple[str, ...]:
    """Return the addresses ``host`` resolves to, cached for a few seconds (asked on every call to an endpoint)."""
    now = time.monotonic()
    cached = _resolved.get(host)
    if cached is not None and now - cached[0] < _RESOLVE_TTL_S:
        return cached[1]
    infos = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    addresses = tuple(sorted({str(info[4][0]) for info in infos}))
    _resolved[host] = (now, addresses)
    return addresses


def endpoint_refusal(url: str) -> str | None:
    """Return why AVENGERS_MODEL_URL_ALLOW refuses a model or embedding endpoint at ``url``, or None to allow it."""
    text = getattr(settings, "MODEL_URL_ALLOW", "") if settings.configured else ""
    if not text:
        return None
    try:
        refusal = _allow_list(text).refusal(url, resolve=_resolve)
    except ValueError as exc:
        return str(exc)
    return None if refusal is None else f"{url_without_credentials(url)}: {refusal}"


# --- Test connection --------------------------------------------------------------------------------------------

_MAX_LISTED = 50  # model ids repeated from a /models reply, each cut to _MAX_ID_CHARS
_MAX_ID_CHARS = 120


@dataclass(frozen=True)
class ConnectionCheck:
    ok: bool
    message: str
    models: tuple[str, ...] = ()
    latency_ms: float | None = None


def check_connection(*, base_url: str, api_key: str, model_id: str, timeout_s: float) -> ConnectionCheck:
    """Call GET {base_url}/models and say what the server serves, or why it could not be reached.

    The message never repeats the server's body (only its status and content type), never follows a redirect
    and never contains the key or URL credentials.
    """
    secrets = (api_key,)
    result = _check(base_url=base_url, api_key=api_key, model_id=model_id, timeout_s=timeout_s)
    return dataclasses.replace(result, message=scrub(result.message, secrets),
                               models=tuple(scrub(m, secrets) for m in result.models))


def _check(*, base_url: str, api_key: str, model_id: str, timeout_s: float) -> ConnectionCheck:
    url = base_url.rstrip("/") + "/models"
    shown = url_without_credentials(url)
    refusal = endpoint_refusal(base_url)
    if refusal is not None:
        return ConnectionCheck(False, f"not called: {refusal}")
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    started = time.perf_counter()
    try:
        response = httpx.get(url, headers=headers, timeout=timeout_s, follow_redirects=False)
    except httpx.ConnectError as exc:
        return ConnectionCheck(False, f"could not connect to {shown}: {_reason(exc)}. Is the server running there?")
    except httpx.TimeoutException:
        return ConnectionCheck(False, f"{shown} gave no answer within {timeout_s:g} s")
    except (httpx.HTTPError, httpx.InvalidURL) as exc:
        return ConnectionCheck(False, f"request to {shown} failed: {_reason(exc)}")
    latency_ms = (time.perf_counter() - started) * 1000
    code = response.status_code
    if code in (401, 403):
        return ConnectionCheck(False, f"{shown} refused the API key (HTTP {code})", latency_ms=latency_ms)
    if 300 <= code < 400:
        return ConnectionCheck(False, f"{shown} answered HTTP {code}, a redirect, which is not followed; give the "
                                      "endpoint's own URL as the base URL", latency_ms=latency_ms)
    if code == 404 and not base_url.rstrip("/").endswith("/v1"):
        return ConnectionCheck(False, f"{shown} answered 404; OpenAI-compatible servers usually live under /v1 "
                                      f"(try {url_without_credentials(base_url.rstrip('/'))}/v1)",
                               latency_ms=latency_ms)
    not_a_list = (f"{shown} answered {describe_reply(code, response.headers.get('content-type'))}, which is not "
                  "an OpenAI-compatible /v1/models response")
    if code != 200:
        return ConnectionCheck(False, not_a_list, latency_ms=latency_ms)
    try:
        payload = response.json()
        ids = tuple(str(item["id"])[:_MAX_ID_CHARS] for item in payload["data"])
    except (ValueError, KeyError, TypeError):
        return ConnectionCheck(False, not_a_list, latency_ms=latency_ms)
    listed = ", ".join(ids[:_MAX_LISTED]) if ids else "none"
    if len(ids) > _MAX_LISTED:
        listed += f" and {len(ids) - _MAX_LISTED} more"
    if model_id not in ids:
        return ConnectionCheck(False, f"reachable, but it does not serve {model_id!r}; it serves: {listed}",
                               ids, latency_ms)
    return ConnectionCheck(True, f"OK in {latency_ms:.0f} ms; serves {listed}", ids, latency_ms)


def _reason(exc: Exception) -> str:
    text = str(exc) or type(exc).__name__
    return "connection refused" if "refused" in text.lower() else text


# --- Chat completions -------------------------------------------------------------------------------------------


class OpenAIChatClient:
    """Call POST {base_url}/chat/completions with bounded concurrency, retries with backoff and a circuit breaker.

    Thread-safe: one object serves every thread that talks to its endpoint (see ``client_for``).
    """

    def __init__(
        self,
        *,
        base_url: str,
        api_key: str = "",
        max_concurrency: int = 8,
        timeout_s: float = 120.0,
        connect_timeout_s: float = 5.0,
        retry: RetryPolicy = RetryPolicy(),
        breaker: CircuitBreaker | None = None,
        sleep: Callable[[float], None] = time.sleep,
        seed: int | None = None,
    ) -> None:
        if max_concurrency < 1:
            raise ValueError(f"max_concurrency must be at least 1, not {max_concurrency}")
        self.base_url = base_url.rstrip("/")
        self.url = self.base_url + "/chat/completions"
        self._shown_url = url_without_credentials(self.url)  # what messages name: never a user:password@
        self.max_concurrency = max_concurrency
        self.timeout_s = timeout_s
        self.connect_timeout_s = connect_timeout_s
        self.retry = retry
        self.breaker = breaker if breaker is not None else CircuitBreaker(
            on_change=metrics.circuit_watcher(self.base_url))
        self._secrets = (api_key,)
        self._sleep = sleep
        self._rng = random.Random(seed)
        self._rng_lock = threading.Lock()
        self._slots = threading.BoundedSemaphore(max_concurrency)
        self._last_failure = ""
        # As many pooled connections as slots, so a request holding a slot never waits for a connection.
        self._http = httpx.Client(
            timeout=httpx.Timeout(timeout_s, connect=connect_timeout_s),
            limits=httpx.Limits(max_connections=max_concurrency, max_keepalive_connections=max_concurrency),
            headers={"Authorization": f"Bearer {api_key}"} if api_key else {},
            follow_redirects=False,  # a redirect could send the key, or this request, anywhere
        )

    def __repr__(self) -> str:
        return (f"OpenAIChatClient(base_url={url_without_credentials(self.base_url)!r}, "
                f"max_concurrency={self.max_concurrency})")

    def complete(self, request: ChatRequest, *, timeout_s: float | None = None) -> Completion:
        """Return exactly ``request.n`` choices, topping up with more requests when the server returns fewer.

        ``timeout_s`` bounds the whole call, retries and top-ups included (the per-request deadline of a
        routed query); without it each attempt has the client's own timeout.
        """
        started = time.perf_counter()
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        choices: list[Choice] = []
        prompt_tokens: int | None = None
        completion_tokens: int | None = 0
        server_model = ""
        attempts = 0
        while len(choices) < request.n:
            remaining = request.n - len(choices)
            part = request
            if choices:
                # Servers that ignore n (llama.cpp) would repeat the same sample for the same seed.
                seed = None if request.seed is None else request.seed + len(choices)
                part = dataclasses.replace(request, n=remaining, seed=seed)
            try:
                reply, attempts = self._send(part, attempts_before=attempts, deadline=deadline)
            except GenerationError as error:
                metrics.generation_failed(request.model, error.kind)
                raise
            choices.extend(reply.choices[:remaining])
            if prompt_tokens is None:
                prompt_tokens = reply.prompt_tokens
            completion_tokens = (None if completion_tokens is None or reply.completion_tokens is None
                                 else completion_tokens + reply.completion_tokens)
            server_model = server_model or reply.server_model
        completion = Completion(
            choices=tuple(choices),
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            latency_ms=(time.perf_counter() - started) * 1000,
            attempts=attempts,
            server_model=server_model,
        )
        metrics.generation_done(request.model, completion)
        return completion

    def close(self) -> None:
        """Close the pooled connections."""
        self._http.close()

    def _send(self, request: ChatRequest, *, attempts_before: int, deadline: float | None = None
              ) -> tuple[Completion, int]:
        """POST one request with retries; return the reply and the attempts made so far in this complete() call."""
        payload = request.payload()
        attempts = attempts_before
        for attempt in range(1, self.retry.max_attempts + 1):
            with self._slots:
                # Asked after getting a slot, so requests queued behind a dying endpoint fail fast too.
                if not self.breaker.allow():
                    raise self._circuit_open(attempts)
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    self.breaker.release()
                    raise GenerationError("timeout", f"{self._shown_url}: the request's time ran out after {attempts} "
                                                     "attempt(s)", attempts=attempts, retryable=False)
                attempts += 1
                try:
                    reply = self._post(payload, left)
                except GenerationError as error:
                    failure = error
                except BaseException:
                    self.breaker.release()  # a bug or an interrupt says nothing about the endpoint
                    raise
                else:
                    self.breaker.record_success()
                    return reply, attempts
            if failure.kind in BREAKER_KINDS:
                self._last_failure = failure.message
                self.breaker.record_failure()
            else:
                self.breaker.release()
            retry_after = failure.retry_after_s if isinstance(failure, _RateLimited) else None
            if retry_after is not None and retry_after > self.retry.max_retry_after_s:
                raise self._give_up(failure, attempts, f"it asks to wait {retry_after:.0f} s, longer than the "
                                                       f"{self.retry.max_retry_after_s:g} s this client waits")
            if not failure.retryable or attempt == self.retry.max_attempts:
                raise self._give_up(failure, attempts)
            with self._rng_lock:
                delay = self.retry.delay_s(attempt, retry_after_s=retry_after, rng=self._rng)
            if deadline is not None and time.monotonic() + delay >= deadline:
                raise self._give_up(failure, attempts, "the request's time runs out before the next attempt")
            _log.info("%s; retrying in %.2f s (attempt %d of %d)", self._scrub(failure.message), delay, attempt + 1,
                      self.retry.max_attempts)
            self._sleep(delay)
        raise AssertionError("unreachable: the loop returns or raises")

    def _post(self, payload: dict[str, Any], timeout_s: float | None = None) -> Completion:
        """Make one HTTP attempt; raise GenerationError (attempts=1) saying what went wrong."""
        self._refuse_if_not_allowed()
        timeout = self._timeout(timeout_s)
        try:
            response = self._http.post(self.url, json=payload, timeout=timeout)
        except (httpx.HTTPError, httpx.InvalidURL) as exc:
            raise self._transport_error(exc, timeout) from None
        failure = self._status_error(response)
        if failure is not None:
            raise failure
        return self._parse(response)

    def _timeout(self, timeout_s: float | None) -> httpx.Timeout:
        if timeout_s is None or timeout_s >= self.timeout_s:
            return httpx.Timeout(self.timeout_s, connect=self.connect_timeout_s)
        return httpx.Timeout(timeout_s, connect=min(self.connect_timeout_s, timeout_s))

    def _refuse_if_not_allowed(self) -> None:
        refusal = endpoint_refusal(self.base_url)
        if refusal is not None:
            raise GenerationError("client_error", f"not called: {refusal}", retryable=False)

    def _transport_error(self, exc: Exception, timeout: httpx.Timeout) -> GenerationError:
        """Say what an httpx exception means for this endpoint."""
        url = self._shown_url
        if isinstance(exc, httpx.ConnectTimeout):
            return GenerationError("timeout", f"could not connect to {url} within {timeout.connect:.3g} s; "
                                              "is the host up and the port open?")
        if isinstance(exc, httpx.TimeoutException):
            return GenerationError("timeout", f"{url} gave no reply within {timeout.read:.3g} s; the server may be "
                                              "overloaded, or the timeout too short for this model")
        if isinstance(exc, httpx.ConnectError):
            return GenerationError("connect", f"could not connect to {url}: {self._scrub(_reason(exc))}. "
                                              "Is the server running there?")
        if isinstance(exc, httpx.RemoteProtocolError):
            return GenerationError("connect", f"{url} closed the connection without a proper reply "
                                              f"({self._scrub(_reason(exc))}); did the server crash or restart?")
        if isinstance(exc, httpx.NetworkError):
            return GenerationError("connect", f"the connection to {url} broke ({self._scrub(_reason(exc))}); "
                                              "did the server crash or restart?")
        # A bad URL or scheme: retrying cannot help.
        return GenerationError("client_error", f"could not send a request to {url}: {self._scrub(_reason(exc))}. "
                                               "Check the endpoint's base URL", retryable=False)

    def _status_error(self, response: httpx.Response) -> GenerationError | None:
        """Return the error an HTTP status stands for, or None for a 2xx.

        The message says the status and content type only: a server's body may be an internal page, or echo the key.
        """
        url, code = self._shown_url, response.status_code
        if 200 <= code < 300:
            return None
        reply = describe_reply(code, response.headers.get("content-type"))
        _log.debug("%s answered %s: %r", url, reply, self._scrub(response.text[:300]))
        if code == 429:
            return _RateLimited(f"{url} is rate limiting (HTTP 429)",
                                retry_after_s=parse_retry_after(response.headers.get("Retry-After")))
        if code >= 500:
            return GenerationError("server_error", f"{url} answered {reply}", status_code=code)
        if code in (401, 403):
            return GenerationError("client_error", f"{url} refused the API key (HTTP {code}). Check the endpoint's "
                                                   "API key", status_code=code)
        if 300 <= code < 400:
            return GenerationError("client_error", f"{url} answered HTTP {code}, a redirect, which is not followed; "
                                                   "give the endpoint's own URL as the base URL", status_code=code)
        if code == 404:
            hint = ("; check the model name and that the base URL ends in /v1" if not self.base_url.endswith("/v1")
                    else "; check the model name")
            return GenerationError("client_error", f"{url} answered {reply}{hint}", status_code=code)
        return GenerationError("client_error", f"{url} rejected the request with {reply}", status_code=code)

    def stream(self, request: ChatRequest, *, timeout_s: float | None = None) -> Iterator[str]:
        """Yield the text of one streamed chat completion (``stream: true``) piece by piece, as it arrives.

        One attempt, no retries: a caller that wants another server when this one fails before its first
        piece catches the GenerationError raised by the first ``next()``. The request holds one of the
        endpoint's slots until the stream ends or is closed; the circuit breaker counts a failure only
        before the first piece.
        """
        if request.n != 1:
            raise ValueError("a streamed request has n=1")
        payload = {**request.payload(), "stream": True}
        timeout = self._timeout(timeout_s)
        with self._slots:
            if not self.breaker.allow():
                raise self._circuit_open(0)
            started = False
            try:
                self._refuse_if_not_allowed()
                with self._http.stream("POST", self.url, json=payload, timeout=timeout) as response:
                    if response.status_code >= 300:
                        response.read()
                        failure = self._status_error(response)
                        assert failure is not None
                        raise failure
                    for line in response.iter_lines():
                        piece = self._stream_piece(line)
                        if piece is None:
                            break
                        if not piece:
                            continue
                        if not started:
                            started = True
                            self.breaker.record_success()
                        yield piece
            except GenerationError as failure:
                if not started:
                    self._record(failure)
                raise GenerationError(failure.kind, self._scrub(failure.message), status_code=failure.status_code,
                                      retryable=failure.retryable) from None
            except (httpx.HTTPError, httpx.InvalidURL) as exc:
                failure = self._transport_error(exc, timeout)
                if not started:
                    self._record(failure)
                raise failure from None
            except BaseException:
                if not started:
                    self.breaker.release()
                raise
            if not started:
                self.breaker.record_success()

    def _record(self, failure: GenerationError) -> None:
        if failure.kind in BREAKER_KINDS:
            self._last_failure = failure.message
            self.breaker.record_failure()
        else:
            self.breaker.release()

    def _stream_piece(self, line: str) -> str | None:
        """Return the content delta of one server-sent event line ("" for none), or None at [DONE]."""
        line = line.strip()
        if not line.startswith("data:"):
            return ""
        data = line[5:].strip()
        if data == "[DONE]":
            return None
        try:
            event = json.loads(data)
        except ValueError:
            raise GenerationError("malformed", f"{self._shown_url} streamed an event that is not JSON") from None
        if isinstance(event, dict) and event.get("error"):
            raise GenerationError("server_error", f"{self._shown_url} streamed an error event")
        try:
            delta = event["choices"][0].get("delta") or {}
        except (KeyError, IndexError, TypeError, AttributeError):
            return ""
        content = delta.get("content") if isinstance(delta, dict) else None
        return content if isinstance(content, str) else ""

    def _parse(self, response: httpx.Response) -> Completion:
        url, code = self._shown_url, response.status_code
        reply = describe_reply(code, response.headers.get("content-type"))
        try:
            body = response.json()
        except ValueError:
            raise GenerationError("malformed", f"{url} answered {reply} with a body that is not JSON",
                                  status_code=code) from None
        try:
            raw_choices = body["choices"]
            if not isinstance(raw_choices, list) or not raw_choices:
                raise TypeError("no choices")
            choices = []
            for raw in raw_choices:
                text = raw["message"]["content"]
                if not isinstance(text, str):
                    raise TypeError("content is not a string")
                choices.append(Choice(text=text, finish_reason=str(raw.get("finish_reason") or "")))
        except (KeyError, TypeError, AttributeError):
            raise GenerationError("malformed", f"{url} answered {reply} but not with an OpenAI chat completion "
                                               "(no choices[].message.content)", status_code=code) from None
        usage = body.get("usage") if isinstance(body.get("usage"), dict) else {}
        return Completion(
            choices=tuple(choices),
            prompt_tokens=_int_or_none(usage.get("prompt_tokens")),
            completion_tokens=_int_or_none(usage.get("completion_tokens")),
            latency_ms=0.0,
            attempts=1,
            server_model=str(body.get("model") or ""),
        )

    def _give_up(self, failure: GenerationError, attempts: int, why: str = "") -> GenerationError:
        message = failure.message
        if why:
            message += f"; not retried: {why}"
        elif failure.retryable:
            message += f" (gave up after {attempts} attempt{'s' if attempts != 1 else ''})"
        return GenerationError(failure.kind, self._scrub(message), status_code=failure.status_code,
                               attempts=attempts, retryable=failure.retryable)

    def _circuit_open(self, attempts: int) -> CircuitOpenError:
        retry_in = self.breaker.retry_in_s()
        last = f"; last error: {self._last_failure}" if self._last_failure else ""
        return CircuitOpenError(
            self._scrub(f"{self._shown_url} failed repeatedly, so no request was sent (circuit breaker open); "
                        f"retry in {retry_in:.1f} s{last}"),
            retry_in_s=retry_in, attempts=attempts,
        )

    def _scrub(self, text: str) -> str:
        # Some servers echo the key they refused; never let it reach a message, a log or the database.
        return scrub(text, self._secrets)


class _RateLimited(GenerationError):
    """A 429 from one attempt, with the wait its Retry-After asked for; never leaves the client."""

    def __init__(self, message: str, *, retry_after_s: float | None) -> None:
        super().__init__("rate_limited", message, status_code=429)
        self.retry_after_s = retry_after_s


def _int_or_none(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


# One circuit breaker per endpoint (base URL, key) and reset time, whatever its callers' timeouts and retries: the
# evaluation lanes and the routing service agree on which servers are down.
_breakers: dict[tuple[str, str, float], CircuitBreaker] = {}
# One client per endpoint and way of calling it (timeout, retries, the breaker's reset time), with its own slots.
_clients: dict[tuple[str, str, float, RetryPolicy, float], OpenAIChatClient] = {}
_clients_lock = threading.Lock()


def client_for(*, base_url: str, api_key: str = "", max_concurrency: int = 8, timeout_s: float = 120.0,
               retry: RetryPolicy = RetryPolicy(), reset_after_s: float = 30.0) -> OpenAIChatClient:
    """Return the process-wide client of this endpoint for this way of calling it; callers never change it.

    Callers with the same (base_url, api_key, timeout_s, retry, reset_after_s) share one client, so its slots
    and connections; every client of an endpoint with that reset time shares one circuit breaker. If the
    endpoint's max_concurrency changed, a fresh client replaces the old one; calls still running on the old one
    finish there.
    """
    endpoint = (base_url.rstrip("/"), api_key)
    key = (*endpoint, timeout_s, retry, reset_after_s)
    client = _clients.get(key)
    if client is None or client.max_concurrency != max_concurrency:
        with _clients_lock:
            breaker = _breakers.get((*endpoint, reset_after_s))
            if breaker is None:
                breaker = CircuitBreaker(reset_after_s=reset_after_s, on_change=metrics.circuit_watcher(endpoint[0]))
                _breakers[(*endpoint, reset_after_s)] = breaker
            client = _clients.get(key)
            if client is None or client.max_concurrency != max_concurrency:
                client = OpenAIChatClient(base_url=base_url, api_key=api_key, max_concurrency=max_concurrency,
                                          timeout_s=timeout_s, retry=retry, breaker=breaker)
                _clients[key] = client
    return client
