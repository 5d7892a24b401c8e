"""The OpenAI-compatible embedding client, against real HTTP servers on loopback.

The happy path runs against llama.cpp's OpenAI-compatible server with SmolLM2 in embedding mode. The
failure modes (429, 5xx, bad keys, slow or broken answers) come from a small scripted HTTP server, since
no real server fails on demand.
"""
from __future__ import annotations

import contextlib
import importlib.metadata
import json
import pathlib
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import numpy as np
import pytest

from routing.core.embedding import CachedEmbedder, EmbeddingCache, get_embedder
from routing.providers import (
    EmbeddingProviderError,
    EmbeddingProviderUnavailable,
    OpenAIEmbeddingClient,
    openai_embedder,
)
from tests.support.servers import free_port, smollm2_model_path, stop_process

SMOLLM2_DIMENSIONS = 576


@dataclass(frozen=True)
class EmbeddingServer:
    base_url: str
    model: str


@contextlib.contextmanager
def embedding_server(*, alias: str = "smollm2") -> Iterator[EmbeddingServer]:
    """Run SmolLM2-135M behind llama-cpp-python's server with /v1/embeddings on a free loopback port."""
    try:
        importlib.metadata.version("llama_cpp_python")
    except importlib.metadata.PackageNotFoundError:
        raise RuntimeError("llama-cpp-python is not installed; run `scripts/install_test_llm.sh .venv`") from None
    port = free_port()
    base_url = f"http://127.0.0.1:{port}/v1"
    cmd = [
        sys.executable, "-m", "llama_cpp.server",
        "--model", str(smollm2_model_path()),
        "--host", "127.0.0.1",
        "--port", str(port),
        "--n_threads", "2",
        "--n_ctx", "2048",
        "--model_alias", alias,
        "--embedding", "true",
        # SmolLM2's GGUF names no pooling, and then the server answers with one vector per token.
        "--kv_overrides", "llama.pooling_type=int:1",
    ]  # fmt: skip

    with tempfile.TemporaryDirectory(prefix="test-embed-llm-") as tmp:
        log_path = pathlib.Path(tmp) / "llm_server.log"
        with log_path.open("wb") as log:
            process = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 120
            while not _answers(f"{base_url}/models"):
                if process.poll() is not None or time.monotonic() > deadline:
                    tail = log_path.read_text(errors="replace")[-3000:]
                    raise RuntimeError(f"llama_cpp.server --embedding did not start (exit {process.poll()}):\n{tail}")
                time.sleep(0.1)
            yield EmbeddingServer(base_url=base_url, model=alias)
        finally:
            stop_process(process)


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2.0).status_code == 200
    except httpx.HTTPError:
        return False


@pytest.fixture(scope="module")
def server() -> Iterator[EmbeddingServer]:
    with embedding_server() as running:
        yield running


@dataclass
class Reply:
    status: int = 200
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    delay_s: float = 0.0


@dataclass
class Scripted:
    base_url: str
    requests: list[dict[str, Any]]


def vectors_reply(count: int, width: int = 3, *, reverse: bool = False) -> Reply:
    data = [{"object": "embedding", "index": i, "embedding": [float(i + 1)] + [0.0] * (width - 1)}
            for i in range(count)]
    return Reply(body={"object": "list", "data": data[::-1] if reverse else data, "model": "m"})


@contextlib.contextmanager
def scripted_server(*replies: Reply, path: str = "/v1") -> Iterator[Scripted]:
    """Answer POSTs with ``replies`` in turn (the last one repeats); record each request body."""
    queue = list(replies)
    requests: list[dict[str, Any]] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
            length = int(self.headers.get("content-length", 0))
            requests.append({"path": self.path, "auth": self.headers.get("authorization"),
                             "json": json.loads(self.rfile.read(length) or b"null")})
            reply = queue.pop(0) if len(queue) > 1 else queue[0]
            time.sleep(reply.delay_s)
            payload = reply.body if isinstance(reply.body, bytes) else json.dumps(reply.body).encode()
            try:
                self.send_response(reply.status)
                for name, value in {"content-type": "application/json", **reply.headers}.items():
                    self.send_header(name, value)
                self.send_header("content-length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client gave up (timeout tests)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    http = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=http.serve_forever, daemon=True)
    thread.start()
    try:
        yield Scripted(base_url=f"http://127.0.0.1:{http.server_address[1]}{path}", requests=requests)
    finally:
        http.shutdown()
        http.server_close()


def client(base_url: str, **options: Any) -> OpenAIEmbeddingClient:
    return OpenAIEmbeddingClient(base_url=base_url, model="m", **{"backoff_s": 0.01, **options})


# ---------------------------------------------------------------------------------------- real llama.cpp server


@pytest.mark.integration
def test_it_returns_unit_length_vectors_from_a_real_endpoint(server: EmbeddingServer) -> None:
    embedder = openai_embedder(server.base_url, server.model)
    assert embedder.name == "openai:smollm2"
    out = embedder.embed(["What is 2 + 2?", "Name the capital of France.", "Write a haiku."])
    assert out.shape == (3, SMOLLM2_DIMENSIONS) and out.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-5)
    assert embedder.dimensions == SMOLLM2_DIMENSIONS  # learnt from the first answer


@pytest.mark.integration
def test_it_keeps_the_order_of_texts_across_batches(server: EmbeddingServer) -> None:
    texts = ["a red apple", "quantum field theory", "a green apple", "tax law"]
    batched = openai_embedder(server.base_url, server.model, batch_size=3).embed(texts)
    one_by_one = np.vstack([openai_embedder(server.base_url, server.model).embed([t]) for t in texts])
    assert ((batched * one_by_one).sum(axis=1) > 0.999).all()


@pytest.mark.integration
def test_it_discovers_dimensions_before_any_text_and_checks_configured_ones(server: EmbeddingServer) -> None:
    assert openai_embedder(server.base_url, server.model).embed([]).shape == (0, SMOLLM2_DIMENSIONS)
    wrong = openai_embedder(server.base_url, server.model, dimensions=384)
    with pytest.raises(RuntimeError, match="576-dim vectors, expected 384"):
        wrong.embed(["hello"])


@pytest.mark.integration
def test_the_cache_spares_the_endpoint_a_second_call(server: EmbeddingServer) -> None:
    with OpenAIEmbeddingClient(base_url=server.base_url, model=server.model) as http:
        calls: list[list[str]] = []

        class Counting:
            def embed(self, texts: list[str]) -> list[list[float]]:
                calls.append(texts)
                return http.embed(texts)

        embedder = CachedEmbedder(get_embedder("openai", client=Counting(), model=server.model),
                                  EmbeddingCache(":memory:"))
        first = embedder.embed(["one text", "another text"])
        second = embedder.embed(["another text", "one text"])
    assert calls == [["one text", "another text"]]
    np.testing.assert_array_equal(second, first[::-1])


def test_a_closed_port_gives_a_clear_error_after_the_retries() -> None:
    url = f"http://127.0.0.1:{free_port()}/v1"
    started = time.monotonic()
    with pytest.raises(EmbeddingProviderUnavailable) as caught:
        client(url, max_retries=2).embed(["hello"])
    assert str(caught.value) == (f"could not connect to {url}/embeddings: connection refused. "
                                 "Is the server running there? (after 3 attempts)")
    assert time.monotonic() - started < 5


def test_a_bad_base_url_is_refused_before_any_request() -> None:
    with pytest.raises(ValueError, match="http://"):
        openai_embedder("gpu1:8000/v1", "m")


# ---------------------------------------------------------------------------------------- scripted failures


def test_it_retries_overload_and_server_errors_then_succeeds() -> None:
    replies = (Reply(503, {"error": {"message": "busy"}}), Reply(429, {"error": {"message": "slow down"}},
               {"retry-after": "0"}), vectors_reply(2, reverse=True))
    with scripted_server(*replies) as srv:
        vectors = client(srv.base_url, api_key="sk-test").embed(["a", "b"])
    assert len(srv.requests) == 3
    assert srv.requests[0] == {"path": "/v1/embeddings", "auth": "Bearer sk-test",
                               "json": {"model": "m", "input": ["a", "b"]}}
    assert vectors == [[1.0, 0.0, 0.0], [2.0, 0.0, 0.0]]  # put back in index order


def test_it_gives_up_on_a_server_that_keeps_failing() -> None:
    with scripted_server(Reply(500, {"error": {"message": "llama_decode returned -1"}})) as srv:
        with pytest.raises(EmbeddingProviderUnavailable,
                           match=r"HTTP 500 \(application/json\) \(after 3 attempts\)") as caught:
            client(srv.base_url, max_retries=2).embed(["a"])
    assert len(srv.requests) == 3 and "llama_decode" not in str(caught.value)  # the body is never repeated


def test_it_does_not_retry_a_bad_request() -> None:
    with scripted_server(Reply(400, {"error": {"message": "input is too long"}})) as srv:
        with pytest.raises(EmbeddingProviderError, match=r"HTTP 400 \(application/json\)$") as caught:
            client(srv.base_url).embed(["a"])
    assert not isinstance(caught.value, EmbeddingProviderUnavailable)
    assert len(srv.requests) == 1


def test_a_refused_api_key_is_named() -> None:
    with scripted_server(Reply(401, {"error": {"message": "bad key"}})) as srv:
        with pytest.raises(EmbeddingProviderError, match=r"refused the API key \(HTTP 401\)"):
            client(srv.base_url, api_key="wrong").embed(["a"])


def test_a_missing_v1_is_hinted() -> None:
    with scripted_server(Reply(404, {"detail": "Not Found"}), path="") as srv:
        with pytest.raises(EmbeddingProviderError, match="usually live under /v1"):
            client(srv.base_url).embed(["a"])


def test_a_slow_server_times_out_with_a_clear_error() -> None:
    with scripted_server(Reply(delay_s=1.0, body={"data": []})) as srv:
        with pytest.raises(EmbeddingProviderUnavailable, match=r"gave no answer within 0.2 s \(after 2 attempts\)"):
            client(srv.base_url, timeout_s=0.2, max_retries=1).embed(["a"])


def test_per_token_vectors_are_explained() -> None:
    nested = {"data": [{"index": 0, "embedding": [[0.1, 0.2], [0.3, 0.4]]}]}
    with scripted_server(Reply(200, nested)) as srv:
        with pytest.raises(EmbeddingProviderError, match="per-token vectors.*pooling"):
            client(srv.base_url).embed(["a"])


def test_a_wrong_number_of_vectors_is_an_error() -> None:
    with scripted_server(vectors_reply(1)) as srv:
        with pytest.raises(EmbeddingProviderError, match="returned 1 embeddings for 2 texts"):
            client(srv.base_url).embed(["a", "b"])


def test_an_answer_that_is_not_json_is_an_error() -> None:
    with scripted_server(Reply(200, b"<html>proxy page</html>")) as srv:
        with pytest.raises(EmbeddingProviderError, match="not with an OpenAI-compatible embeddings list"):
            client(srv.base_url).embed(["a"])
