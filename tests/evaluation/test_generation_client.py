"""OpenAIChatClient against a real loopback server that injects faults (no Django, no database)."""
from __future__ import annotations

import itertools
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from evaluation.core.generation import ChatRequest, CircuitBreaker, CircuitOpenError, GenerationError, RetryPolicy
from evaluation.providers import OpenAIChatClient, client_for
from tests.support.fault_server import (
    DEFAULT_MODEL,
    FaultServer,
    drop,
    fault_server,
    hang,
    malformed,
    missing_choices,
    status,
)
from tests.support.servers import free_port

REQUEST = ChatRequest(model=DEFAULT_MODEL, messages=({"role": "user", "content": "What is six times seven?"},))
FAST_RETRY = RetryPolicy(max_attempts=4, base_delay_s=0.01, max_delay_s=0.05)

MakeClient = Callable[..., OpenAIChatClient]


@pytest.fixture
def sleeps() -> list[float]:
    return []


@pytest.fixture
def make_client(sleeps: list[float]) -> Iterator[MakeClient]:
    """Build clients that record their backoff sleeps instead of waiting; close them after the test."""
    clients: list[OpenAIChatClient] = []

    def make(server: FaultServer | str, **options: Any) -> OpenAIChatClient:
        base_url = server if isinstance(server, str) else server.base_url
        options = {"retry": FAST_RETRY, "sleep": sleeps.append, "timeout_s": 5.0, "seed": 0, **options}
        client = OpenAIChatClient(base_url=base_url, **options)
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.close()


def test_it_returns_the_choices_tokens_and_latency(make_client: MakeClient) -> None:
    with fault_server(delay_s=0.05) as server:
        completion = make_client(server).complete(REQUEST)
    assert [c.text for c in completion.choices] == ["Answer: 42"]
    assert completion.choices[0].finish_reason == "stop"
    assert completion.prompt_tokens == 5 and completion.completion_tokens == 2
    assert completion.server_model == DEFAULT_MODEL
    assert completion.attempts == 1
    assert 50 <= completion.latency_ms < 5000
    assert server.bodies == [REQUEST.payload()]


def test_it_retries_a_server_error_and_succeeds(make_client: MakeClient, sleeps: list[float]) -> None:
    with fault_server(script=[status(500)]) as server:
        completion = make_client(server).complete(REQUEST)
    assert completion.attempts == 2
    assert server.requests == 2 and server.served == {"status_500": 1, "ok": 1}
    assert len(sleeps) == 1 and 0 <= sleeps[0] <= 0.01


def test_it_waits_at_least_retry_after_when_rate_limited(make_client: MakeClient, sleeps: list[float]) -> None:
    with fault_server(script=[status(429, retry_after=1)]) as server:
        completion = make_client(server).complete(REQUEST)
    assert completion.attempts == 2
    assert len(sleeps) == 1 and 1.0 <= sleeps[0] <= 1.5


def test_it_does_not_wait_for_a_retry_after_beyond_its_limit(make_client: MakeClient, sleeps: list[float]) -> None:
    with fault_server(default=status(429, retry_after=600)) as server:
        with pytest.raises(GenerationError) as caught:
            make_client(server).complete(REQUEST)
    assert caught.value.kind == "rate_limited" and caught.value.attempts == 1
    assert "600 s" in caught.value.message
    assert server.requests == 1 and sleeps == []


def test_it_fails_at_once_on_a_client_error(make_client: MakeClient, sleeps: list[float]) -> None:
    with fault_server(default=status(400), error_message="max_tokens is too large") as server:
        with pytest.raises(GenerationError) as caught:
            make_client(server).complete(REQUEST)
    error = caught.value
    assert (error.kind, error.status_code, error.attempts, error.retryable) == ("client_error", 400, 1, False)
    assert "HTTP 400 (application/json)" in error.message and server.base_url in error.message
    assert "max_tokens is too large" not in error.message  # the server's body is never repeated
    assert server.requests == 1 and sleeps == []


def test_it_times_out_a_hanging_server_and_retries_a_bounded_number_of_times(make_client: MakeClient) -> None:
    with fault_server(default=hang(5)) as server:
        client = make_client(server, timeout_s=0.3, retry=RetryPolicy(max_attempts=2, base_delay_s=0.01))
        with pytest.raises(GenerationError) as caught:
            client.complete(REQUEST)
        assert server.requests == 2
    assert caught.value.kind == "timeout" and caught.value.attempts == 2 and caught.value.retryable
    assert "0.3 s" in caught.value.message


def test_it_reconnects_after_the_server_drops_the_connection(make_client: MakeClient) -> None:
    with fault_server(script=[drop()]) as server:
        completion = make_client(server).complete(REQUEST)
    assert completion.attempts == 2 and server.served == {"drop": 1, "ok": 1}


def test_a_server_that_keeps_dropping_fails_with_connect(make_client: MakeClient) -> None:
    with fault_server(default=drop()) as server:
        with pytest.raises(GenerationError) as caught:
            make_client(server, retry=RetryPolicy(max_attempts=3, base_delay_s=0.01)).complete(REQUEST)
    assert caught.value.kind == "connect" and caught.value.attempts == 3 and server.requests == 3


@pytest.mark.parametrize("behaviour", [malformed(), missing_choices()], ids=["bad_json", "no_choices"])
def test_a_reply_that_is_not_a_chat_completion_is_malformed(make_client: MakeClient, behaviour: Any) -> None:
    with fault_server(default=behaviour) as server:
        with pytest.raises(GenerationError) as caught:
            make_client(server, retry=RetryPolicy(max_attempts=2, base_delay_s=0.01)).complete(REQUEST)
    assert caught.value.kind == "malformed" and caught.value.attempts == 2 and server.requests == 2


def test_a_malformed_reply_is_retried(make_client: MakeClient) -> None:
    with fault_server(script=[malformed()]) as server:
        assert make_client(server).complete(REQUEST).attempts == 2


def test_it_gives_up_after_exactly_max_attempts(make_client: MakeClient, sleeps: list[float]) -> None:
    with fault_server(default=status(503)) as server:
        with pytest.raises(GenerationError) as caught:
            make_client(server).complete(REQUEST)
    assert caught.value.kind == "server_error" and caught.value.status_code == 503
    assert caught.value.attempts == 4 and "gave up after 4 attempts" in caught.value.message
    assert server.requests == 4
    assert len(sleeps) == 3 and all(0 <= s <= 0.05 for s in sleeps)


def test_the_breaker_opens_and_then_fails_fast_without_calling_the_server(make_client: MakeClient) -> None:
    breaker = CircuitBreaker(failure_threshold=3, reset_after_s=60.0)
    with fault_server(default=status(500)) as server:
        client = make_client(server, breaker=breaker, retry=RetryPolicy(max_attempts=1))
        for _ in range(3):
            with pytest.raises(GenerationError) as caught:
                client.complete(REQUEST)
            assert caught.value.kind == "server_error"
        with pytest.raises(CircuitOpenError) as opened:
            client.complete(REQUEST)
        assert server.requests == 3
    assert opened.value.kind == "circuit_open" and opened.value.attempts == 0
    assert 59 < opened.value.retry_in_s <= 60
    assert "HTTP 500" in opened.value.message  # says what kept failing


def test_the_breaker_stops_retries_in_the_middle_of_a_call(make_client: MakeClient) -> None:
    with fault_server(default=status(500)) as server:
        client = make_client(server, breaker=CircuitBreaker(failure_threshold=2), retry=RetryPolicy(max_attempts=5))
        with pytest.raises(CircuitOpenError) as caught:
            client.complete(REQUEST)
    assert caught.value.attempts == 2 and server.requests == 2


def test_a_half_open_trial_that_succeeds_closes_the_breaker(make_client: MakeClient) -> None:
    now = [0.0]
    breaker = CircuitBreaker(failure_threshold=1, reset_after_s=10.0, clock=lambda: now[0])
    with fault_server(script=[status(500)]) as server:
        client = make_client(server, breaker=breaker, retry=RetryPolicy(max_attempts=1))
        with pytest.raises(GenerationError):
            client.complete(REQUEST)
        with pytest.raises(CircuitOpenError):
            client.complete(REQUEST)
        now[0] += 10
        assert client.complete(REQUEST).attempts == 1
    assert breaker.state == "closed" and server.requests == 2


def test_rate_limits_and_client_errors_do_not_trip_the_breaker(make_client: MakeClient) -> None:
    breaker = CircuitBreaker(failure_threshold=1)
    with fault_server(script=[status(429, retry_after=0), status(429, retry_after=0), status(400)]) as server:
        client = make_client(server, breaker=breaker, retry=RetryPolicy(max_attempts=2, base_delay_s=0.01))
        with pytest.raises(GenerationError) as limited:
            client.complete(REQUEST)
        with pytest.raises(GenerationError) as rejected:
            client.complete(REQUEST)
        assert client.complete(REQUEST).attempts == 1
    assert (limited.value.kind, limited.value.attempts, rejected.value.kind) == ("rate_limited", 2, "client_error")
    assert breaker.state == "closed"


def test_it_keeps_at_most_max_concurrency_requests_in_flight(make_client: MakeClient) -> None:
    with fault_server(delay_s=0.15) as server:
        client = make_client(server, max_concurrency=3)
        with ThreadPoolExecutor(max_workers=12) as pool:
            completions = list(pool.map(lambda _: client.complete(REQUEST), range(12)))
    assert all(c.choices[0].text == "Answer: 42" for c in completions)
    assert server.requests == 12 and server.max_concurrency == 3


def test_it_frees_its_slot_while_sleeping_between_retries(make_client: MakeClient) -> None:
    sleeping, wake = threading.Event(), threading.Event()

    def sleep(_: float) -> None:
        sleeping.set()
        wake.wait(10)

    with fault_server(script=[status(500)]) as server:
        client = make_client(server, max_concurrency=1, sleep=sleep)
        with ThreadPoolExecutor(max_workers=2) as pool:
            first = pool.submit(client.complete, REQUEST)
            assert sleeping.wait(5)
            second = pool.submit(client.complete, REQUEST)
            assert second.result(timeout=5).attempts == 1  # got the only slot while the first call slept
            wake.set()
            assert first.result(timeout=5).attempts == 2


def test_it_tops_up_choices_from_a_server_that_ignores_n(make_client: MakeClient) -> None:
    counter = itertools.count(1)
    with fault_server(one_choice=True, content=lambda body: f"Answer: {next(counter)}") as server:
        request = ChatRequest(model=DEFAULT_MODEL, messages=REQUEST.messages, n=3, temperature=0.8, seed=7)
        completion = make_client(server).complete(request)
    assert [c.text for c in completion.choices] == ["Answer: 1", "Answer: 2", "Answer: 3"]
    assert completion.attempts == 3 and server.requests == 3
    assert [(b["n"], b["seed"]) for b in server.bodies] == [(3, 7), (2, 8), (1, 9)]
    assert completion.prompt_tokens == 5 and completion.completion_tokens == 6


def test_it_asks_once_for_n_choices_from_a_server_that_honours_n(make_client: MakeClient) -> None:
    with fault_server() as server:
        completion = make_client(server).complete(ChatRequest(model=DEFAULT_MODEL, messages=REQUEST.messages, n=3))
    assert len(completion.choices) == 3 and server.requests == 1 and completion.completion_tokens == 6


def test_it_sends_the_api_key_but_never_shows_it(make_client: MakeClient) -> None:
    key = "sk-test-0123456789abcdef"
    with fault_server(script=["ok", status(401)], error_message=f"Incorrect API key provided: {key}") as server:
        client = make_client(server, api_key=key)
        client.complete(REQUEST)
        with pytest.raises(GenerationError) as caught:
            client.complete(REQUEST)
    assert [h["authorization"] for h in server.headers] == [f"Bearer {key}"] * 2
    error = caught.value
    assert error.kind == "client_error" and "API key" in error.message
    assert key not in error.message and key not in str(error) and key not in repr(error)
    assert key not in repr(client)


def test_it_sends_no_authorization_header_without_a_key(make_client: MakeClient) -> None:
    with fault_server() as server:
        make_client(server).complete(REQUEST)
    assert "authorization" not in server.headers[0]


def test_a_dead_port_fails_with_a_clear_connect_error(make_client: MakeClient) -> None:
    base_url = f"http://127.0.0.1:{free_port()}/v1"
    with pytest.raises(GenerationError) as caught:
        make_client(base_url, retry=RetryPolicy(max_attempts=2, base_delay_s=0.01)).complete(REQUEST)
    error = caught.value
    assert error.kind == "connect" and error.retryable and error.attempts == 2
    assert f"could not connect to {base_url}/chat/completions" in error.message
    assert "Is the server running there?" in error.message


def test_it_fails_while_the_server_is_down_and_recovers_when_it_returns(make_client: MakeClient) -> None:
    with fault_server() as server:
        client = make_client(server, retry=RetryPolicy(max_attempts=2, base_delay_s=0.01))
        assert client.complete(REQUEST).attempts == 1  # leaves a keep-alive connection in the pool
        server.stop()
        with pytest.raises(GenerationError) as caught:
            client.complete(REQUEST)
        assert caught.value.kind == "connect"
        server.start()
        assert client.complete(REQUEST).choices[0].text == "Answer: 42"
    assert server.requests == 2


def test_client_for_shares_one_client_per_endpoint_and_key() -> None:
    url = f"http://127.0.0.1:{free_port()}/v1"
    first = client_for(base_url=url, api_key="key-a")
    try:
        assert client_for(base_url=url + "/", api_key="key-a") is first
        assert client_for(base_url=url, api_key="key-b") is not first
        resized = client_for(base_url=url, api_key="key-a", max_concurrency=2)
        assert resized is not first and resized.max_concurrency == 2
        assert client_for(base_url=url, api_key="key-a", max_concurrency=2) is resized
    finally:
        first.close()
