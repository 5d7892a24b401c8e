"""Network adapters for OpenAI-compatible model servers (vLLM, llama.cpp, any /v1 endpoint)."""
from __future__ import annotations

import time
from dataclasses import dataclass

import httpx


@dataclass(frozen=True)
class ConnectionCheck:
    ok: bool
    message: str
    models: tuple[str, ...] = ()
    latency_ms: float | None = None


def check_connection(*, base_url: str, api_key: str, model_id: str, timeout_s: float) -> ConnectionCheck:
    """Call GET {base_url}/models and say what the server serves, or why it could not be reached."""
    url = base_url.rstrip("/") + "/models"
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    started = time.perf_counter()
    try:
        response = httpx.get(url, headers=headers, timeout=timeout_s, follow_redirects=True)
    except httpx.ConnectError as exc:
        return ConnectionCheck(False, f"could not connect to {url}: {_reason(exc)}. Is the server running there?")
    except httpx.TimeoutException:
        return ConnectionCheck(False, f"{url} gave no answer within {timeout_s:g} s")
    except httpx.HTTPError as exc:
        return ConnectionCheck(False, f"request to {url} failed: {_reason(exc)}")
    latency_ms = (time.perf_counter() - started) * 1000
    if response.status_code in (401, 403):
        return ConnectionCheck(False, f"{url} refused the API key (HTTP {response.status_code})", latency_ms=latency_ms)
    if response.status_code == 404 and not base_url.rstrip("/").endswith("/v1"):
        return ConnectionCheck(False, f"{url} answered 404; OpenAI-compatible servers usually live under /v1 "
                                      f"(try {base_url.rstrip('/')}/v1)", latency_ms=latency_ms)
    if response.status_code != 200:
        return ConnectionCheck(False, f"{url} answered HTTP {response.status_code}: {response.text[:200]}",
                               latency_ms=latency_ms)
    try:
        payload = response.json()
        ids = tuple(str(item["id"]) for item in payload["data"])
    except (ValueError, KeyError, TypeError):
        return ConnectionCheck(False, f"{url} answered, but not with an OpenAI-compatible model list",
                               latency_ms=latency_ms)
    listed = ", ".join(ids) if ids else "none"
    if model_id not in ids:
        return ConnectionCheck(False, f"reachable, but it does not serve {model_id!r}; it serves: {listed}",
                               ids, latency_ms)
    return ConnectionCheck(True, f"OK in {latency_ms:.0f} ms; serves {listed}", ids, latency_ms)


def _reason(exc: Exception) -> str:
    text = str(exc) or type(exc).__name__
    return "connection refused" if "refused" in text.lower() else text
