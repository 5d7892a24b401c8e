"""Integration tests for the real test servers in tests/support/servers.py (no Django, no database).

The servers are the session's ``llm`` and ``redis`` fixtures of tests/conftest.py, started by these helpers.
"""

from __future__ import annotations

import httpx
import pytest
from redis import Redis

from .servers import LLMServer, RedisServer, redis_server


@pytest.mark.integration
def test_llm_lists_model_alias(llm: LLMServer) -> None:
    """GET /v1/models lists the configured alias."""
    response = httpx.get(f"{llm.base_url}/models", timeout=10.0)
    assert response.status_code == 200
    assert llm.model in [model["id"] for model in response.json()["data"]]


@pytest.mark.integration
def test_llm_chat_completion(llm: LLMServer) -> None:
    """POST /v1/chat/completions returns real generated text with usage."""
    response = httpx.post(
        f"{llm.base_url}/chat/completions",
        json={
            "model": llm.model,
            "messages": [{"role": "user", "content": "What is the capital of France? Answer in one word."}],
            "max_tokens": 16,
            "temperature": 0,
        },
        timeout=60.0,
    )
    assert response.status_code == 200, response.text
    body = response.json()
    choice = body["choices"][0]
    assert choice["message"]["content"].strip()
    assert choice["finish_reason"]
    assert body["usage"]["completion_tokens"] > 0


@pytest.mark.integration
def test_redis_set_get_round_trip(redis: RedisServer) -> None:
    """SET then GET returns the stored value."""
    client = Redis.from_url(redis.url)
    try:
        assert client.set("test-key", "value")
        assert client.get("test-key") == b"value"
    finally:
        client.close()


@pytest.mark.integration
def test_redis_stops_on_exit() -> None:
    """The Redis process is gone after the context manager exits."""
    with redis_server() as server:
        process = server.process
    assert process.poll() is not None
