"""Network adapters for routing: an OpenAI-compatible /v1/embeddings client (vLLM, llama.cpp, OpenAI).

The client implements routing.core.embedding.EmbeddingClient; the core embedder scales its vectors to
unit length. Connection errors, timeouts, 429 and 5xx answers are retried with the generation client's
policy (``evaluation.core.generation.RetryPolicy``: jittered exponential backoff, Retry-After honoured up to
``max_backoff_s``); every other failure raises at once with a message that says what to fix. Messages give
the status and content type of a bad reply, never its body, and never the key; redirects are not followed;
AVENGERS_MODEL_URL_ALLOW applies as to model endpoints.
"""
from __future__ import annotations

import random
import time
from collections.abc import Sequence
from typing import Any

import httpx

from evaluation.core.endpoints import describe_reply, normalise_base_url
from evaluation.core.generation import RetryPolicy, parse_retry_after
from evaluation.core.secrets import scrub
from evaluation.providers import endpoint_refusal
from routing.core.embedding import OpenAIEmbedder

RETRY_STATUS = frozenset({408, 429, 500, 502, 503, 504})  # timeouts, overload, server errors


class EmbeddingProviderError(RuntimeError):
    """The endpoint cannot give embeddings for this request; the message says why."""


class EmbeddingProviderUnavailable(EmbeddingProviderError):
    """The endpoint could not be reached or stayed overloaded through every retry (worth trying later)."""


class OpenAIEmbeddingClient:
    """POST texts to ``{base_url}/embeddings`` and return one vector per text, in order."""

    def __init__(
        self, *, base_url: str, model: str, api_key: str = "", timeout_s: float = 60.0, connect_timeout_s: float = 5.0,
        max_retries: int = 3, backoff_s: float = 0.5, max_backoff_s: float = 10.0,
    ) -> None:
        self.base_url = normalise_base_url(base_url)
        if not self.base_url:
            raise ValueError("base_url is empty; give the endpoint's /v1 URL, e.g. http://gpu1:8000/v1")
        if not model:
            raise ValueError("model is empty; give the model name the endpoint serves")
        if max_retries < 0:
            raise ValueError(f"max_retries must be 0 or more, got {max_retries}")
        self.model = model
        self.url = self.base_url + "/embeddings"
        self._secrets = (api_key,)
        self.retry = RetryPolicy(max_attempts=max_retries + 1, base_delay_s=backoff_s, max_delay_s=max_backoff_s)
        self._rng = random.Random()
        self.timeout_s = timeout_s
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        # One pooled client: repeated batches reuse the connection.
        # No redirects: one could send the key, or the texts, anywhere.
        self._http = httpx.Client(headers=headers, timeout=httpx.Timeout(timeout_s, connect=connect_timeout_s),
                                  follow_redirects=False)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> OpenAIEmbeddingClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def embed(self, texts: list[str]) -> list[list[float]]:
        """Return the endpoint's vector for each text, in the order of ``texts``."""
        if not texts:
            return []
        try:
            response = self._post({"model": self.model, "input": list(texts)})
            return self._vectors(response, len(texts))
        except EmbeddingProviderError as exc:
            raise type(exc)(scrub(str(exc), self._secrets)) from None

    def _post(self, payload: dict[str, Any]) -> httpx.Response:
        refusal = endpoint_refusal(self.base_url)
        if refusal is not None:
            raise EmbeddingProviderError(f"not called: {refusal}")
        attempts = self.retry.max_attempts
        for attempt in range(1, attempts + 1):
            try:
                response = self._http.post(self.url, json=payload)
            except httpx.ConnectError as exc:
                problem = f"could not connect to {self.url}: {_reason(exc)}. Is the server running there?"
                retry_after = None
            except httpx.TimeoutException:
                problem = f"{self.url} gave no answer within {self.timeout_s:g} s"
                retry_after = None
            except (httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError) as exc:
                problem = f"the connection to {self.url} broke: {_reason(exc)}"
                retry_after = None
            else:
                if response.status_code not in RETRY_STATUS:
                    self._raise_for_status(response)
                    return response
                problem = f"{self.url} answered {_reply(response)}"
                retry_after = parse_retry_after(response.headers.get("retry-after"))
            if attempt == attempts:
                tries = f" (after {attempts} attempts)" if attempts > 1 else ""
                raise EmbeddingProviderUnavailable(problem + tries)
            # Unlike a generation request, an embedding batch waits out a long Retry-After, cut to max_backoff_s.
            if retry_after is not None:
                retry_after = min(retry_after, self.retry.max_delay_s)
            time.sleep(self.retry.delay_s(attempt, retry_after_s=retry_after, rng=self._rng))
        raise AssertionError("unreachable")  # pragma: no cover

    def _raise_for_status(self, response: httpx.Response) -> None:
        status = response.status_code
        if status == 200:
            return
        if status in (401, 403):
            raise EmbeddingProviderError(f"{self.url} refused the API key (HTTP {status})")
        if 300 <= status < 400:
            raise EmbeddingProviderError(f"{self.url} answered HTTP {status}, a redirect, which is not followed; give "
                                         "the endpoint's own URL as the base URL")
        if status == 404 and not self.base_url.endswith("/v1"):
            raise EmbeddingProviderError(
                f"{self.url} answered 404; OpenAI-compatible servers usually live under /v1 (try {self.base_url}/v1)"
            )
        if status in (404, 405, 501):
            raise EmbeddingProviderError(
                f"{self.url} answered {_reply(response)}: this server does not serve embeddings "
                "(vLLM needs an embedding model, llama.cpp needs --embedding)"
            )
        raise EmbeddingProviderError(f"{self.url} answered {_reply(response)}")

    def _vectors(self, response: httpx.Response, expected: int) -> list[list[float]]:
        try:
            items = response.json()["data"]
            ordered = sorted(items, key=lambda item: int(item.get("index", 0))) if all(
                "index" in item for item in items) else items
            vectors = [item["embedding"] for item in ordered]
        except (ValueError, KeyError, TypeError, AttributeError):
            raise EmbeddingProviderError(
                f"{self.url} answered {_reply(response)}, but not with an OpenAI-compatible embeddings list"
            ) from None
        if len(vectors) != expected:
            raise EmbeddingProviderError(f"{self.url} returned {len(vectors)} embeddings for {expected} texts")
        for vector in vectors:
            if isinstance(vector, str):
                raise EmbeddingProviderError(f"{self.url} returned base64 embeddings; expected lists of floats")
            if not isinstance(vector, Sequence) or not vector or not all(
                    isinstance(x, (int, float)) for x in vector):
                nested = isinstance(vector, Sequence) and bool(vector) and isinstance(vector[0], Sequence)
                hint = (" per-token vectors: the server does no pooling (for llama.cpp set the model's "
                        "pooling_type, e.g. --kv_overrides llama.pooling_type=int:1)") if nested else " a bad vector"
                raise EmbeddingProviderError(f"{self.url} returned{hint}")
        return [[float(x) for x in vector] for vector in vectors]


def openai_embedder(
    base_url: str, model: str, api_key: str = "", *, dimensions: int | None = None, batch_size: int = 64,
    timeout_s: float = 60.0, max_retries: int = 3, backoff_s: float = 0.5,
) -> OpenAIEmbedder:
    """Build the `openai` embedder on an OpenAI-compatible endpoint, with its HTTP client."""
    client = OpenAIEmbeddingClient(base_url=base_url, model=model, api_key=api_key, timeout_s=timeout_s,
                                   max_retries=max_retries, backoff_s=backoff_s)
    return OpenAIEmbedder(client=client, model=model, dimensions=dimensions, batch_size=batch_size)


def _reason(exc: Exception) -> str:
    text = str(exc) or type(exc).__name__
    return "connection refused" if "refused" in text.lower() else text


def _reply(response: httpx.Response) -> str:
    """Return "HTTP 500 (text/html)": what a reply was, never what it said."""
    return describe_reply(response.status_code, response.headers.get("content-type"))
