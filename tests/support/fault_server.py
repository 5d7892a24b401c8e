"""A real OpenAI-compatible HTTP server on loopback whose faults the test scripts: errors, hangs, drops, bad JSON.

    with fault_server(script=[status(500), OK], delay_s=0.05, slots=4) as server:
        client = OpenAIChatClient(base_url=server.base_url)
        ...
        assert server.served["status_500"] == 1

Also runs on its own for benchmarks: ``python -m tests.support.fault_server --port 8765 --delay 0.2 --slots 16``
prints "ready" once it listens.
"""
from __future__ import annotations

import argparse
import collections
import contextlib
import http.server
import json
import signal
import socket
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

DEFAULT_CONTENT = "Answer: 42"
DEFAULT_MODEL = "fault-model"


@dataclass(frozen=True)
class Behaviour:
    """What the server does with one chat request."""

    kind: str  # "ok" | "status" | "hang" | "drop" | "malformed" | "missing_choices"
    status_code: int | None = None
    retry_after: float | str | None = None  # seconds, or an HTTP-date string, sent as Retry-After
    seconds: float = 0.0  # for "hang"

    @property
    def label(self) -> str:
        """Return the name it is counted under in ``FaultServer.served``, e.g. "ok" or "status_500"."""
        return f"status_{self.status_code}" if self.kind == "status" else self.kind


OK = Behaviour("ok")
DROP = Behaviour("drop")
MALFORMED = Behaviour("malformed")
MISSING_CHOICES = Behaviour("missing_choices")


def ok() -> Behaviour:
    """Reply with a normal completion."""
    return OK


def status(code: int, *, retry_after: float | str | None = None) -> Behaviour:
    """Reply with HTTP ``code`` and an OpenAI-style error body (and Retry-After if given)."""
    return Behaviour("status", status_code=code, retry_after=retry_after)


def hang(seconds: float) -> Behaviour:
    """Sleep ``seconds`` (past the client's timeout), then reply normally."""
    return Behaviour("hang", seconds=seconds)


def drop() -> Behaviour:
    """Close the connection without any reply."""
    return DROP


def malformed() -> Behaviour:
    """Reply 200 with a body that is not valid JSON."""
    return MALFORMED


def missing_choices() -> Behaviour:
    """Reply 200 with valid JSON that has no ``choices``."""
    return MISSING_CHOICES


_NAMED = {"ok": OK, "drop": DROP, "malformed": MALFORMED, "missing_choices": MISSING_CHOICES}


def _behaviour(value: Behaviour | str | int) -> Behaviour:
    if isinstance(value, Behaviour):
        return value
    if isinstance(value, int):
        return status(value)
    return _NAMED[value]


def _words(text: str) -> int:
    return len(text.split())


class FaultServer:
    """A ThreadingHTTPServer serving /v1/models and /v1/chat/completions, plus the knobs and counters tests use."""

    def __init__(
        self,
        *,
        script: Iterable[Behaviour | str | int] = (),
        default: Behaviour | str | int = OK,
        delay_s: float = 0.0,
        slots: int | None = None,
        content: str | Callable[[dict[str, Any]], str] = DEFAULT_CONTENT,
        one_choice: bool = False,
        model: str = DEFAULT_MODEL,
        error_message: str = "the fault server was told to fail this request",
        port: int = 0,
    ) -> None:
        self.default = _behaviour(default)
        self.delay_s = delay_s
        self.content = content
        self.one_choice = one_choice  # like llama.cpp, which ignores n
        self.model = model
        self.error_message = error_message
        self.port = port
        self._slots = threading.BoundedSemaphore(slots) if slots else None
        self._lock = threading.Lock()
        self._script: collections.deque[Behaviour] = collections.deque(_behaviour(b) for b in script)
        self._stopping = threading.Event()
        self._httpd: _HTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.requests = 0  # chat requests received
        self.served: collections.Counter[str] = collections.Counter()
        self.in_flight = 0
        self.max_concurrency = 0
        self.bodies: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    @property
    def running(self) -> bool:
        return self._httpd is not None

    def script(self, *behaviours: Behaviour | str | int) -> None:
        """Queue behaviours for the next chat requests, after those already queued."""
        with self._lock:
            self._script.extend(_behaviour(b) for b in behaviours)

    def reset_counters(self) -> None:
        with self._lock:
            self.requests = 0
            self.served.clear()
            self.max_concurrency = self.in_flight
            self.bodies.clear()
            self.headers.clear()

    def start(self) -> FaultServer:
        """Listen on ``port`` (a free one the first time if 0; the same one again after ``stop``)."""
        if self._httpd is not None:
            return self
        self._stopping.clear()
        httpd = _HTTPServer(("127.0.0.1", self.port), _Handler)
        httpd.fault = self
        self.port = int(httpd.server_address[1])
        self._httpd = httpd
        self._thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                        name=f"fault-server-{self.port}", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop listening and cut every open connection, as if the process died; hanging replies never arrive."""
        httpd, self._httpd = self._httpd, None
        if httpd is None:
            return
        self._stopping.set()
        httpd.shutdown()
        httpd.server_close()
        httpd.close_connections()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> FaultServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _next_behaviour(self) -> Behaviour:
        with self._lock:
            return self._script.popleft() if self._script else self.default

    def _enter(self, body: dict[str, Any], headers: dict[str, str]) -> None:
        with self._lock:
            self.requests += 1
            self.bodies.append(body)
            self.headers.append(headers)
            self.in_flight += 1
            self.max_concurrency = max(self.max_concurrency, self.in_flight)

    def _leave(self, behaviour: Behaviour) -> None:
        with self._lock:
            self.in_flight -= 1
            self.served[behaviour.label] += 1

    def _completion(self, body: dict[str, Any]) -> dict[str, Any]:
        requested = body.get("n", 1)
        n = 1 if self.one_choice or not isinstance(requested, int) or requested < 1 else requested
        texts = [self.content(body) if callable(self.content) else self.content for _ in range(n)]
        prompt = " ".join(str(m.get("content", "")) for m in body.get("messages", []) if isinstance(m, dict))
        prompt_tokens, completion_tokens = _words(prompt), sum(_words(t) for t in texts)
        return {
            "id": f"chatcmpl-{uuid.uuid4().hex[:12]}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": self.model,
            "choices": [
                {"index": i, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}
                for i, text in enumerate(texts)
            ],
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                      "total_tokens": prompt_tokens + completion_tokens},
        }


class _HTTPServer(http.server.ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True  # restart on the same port while old connections sit in TIME_WAIT
    request_queue_size = 1024  # benchmarks open hundreds of connections at once
    fault: FaultServer

    def __init__(self, address: tuple[str, int], handler: type[http.server.BaseHTTPRequestHandler]) -> None:
        super().__init__(address, handler)
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()

    def process_request(self, request: Any, client_address: Any) -> None:
        # Headers and body go out in separate writes; Nagle plus the peer's delayed ACK would add 40 ms to each reply.
        with contextlib.suppress(OSError):
            request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with self._connections_lock:
            self._connections.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self._connections_lock:
            self._connections.discard(request)
        super().shutdown_request(request)

    def close_connections(self) -> None:
        """Cut keep-alive connections too: a stopped server must not go on answering on them."""
        with self._connections_lock:
            connections, self._connections = list(self._connections), set()
        for conn in connections:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
            with contextlib.suppress(OSError):
                conn.close()


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as real model servers do
    server: _HTTPServer

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class names it so
        pass

    def do_GET(self) -> None:
        fault = self.server.fault
        if self.path.rstrip("/") != "/v1/models":
            self._json(404, {"error": {"message": f"no route {self.path}", "type": "not_found", "code": 404}})
            return
        self._json(200, {"object": "list", "data": [{"id": fault.model, "object": "model", "created": 0,
                                                     "owned_by": "fault-server"}]})

    def do_POST(self) -> None:
        fault = self.server.fault
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        if self.path.rstrip("/") != "/v1/chat/completions":
            self._json(404, {"error": {"message": f"no route {self.path}", "type": "not_found", "code": 404}})
            return
        try:
            body = json.loads(raw or b"{}")
        except ValueError:
            body = {"_unparsed": raw.decode("utf-8", "replace")}
        behaviour = fault._next_behaviour()
        fault._enter(body, {k.lower(): v for k, v in self.headers.items()})
        try:
            if fault._slots is not None:
                fault._slots.acquire()
            try:
                self._serve(fault, behaviour, body)
            finally:
                if fault._slots is not None:
                    fault._slots.release()
        except OSError:
            self.close_connection = True  # stop() cut the socket under us
        finally:
            fault._leave(behaviour)

    def _serve(self, fault: FaultServer, behaviour: Behaviour, body: dict[str, Any]) -> None:
        if fault.delay_s and fault._stopping.wait(fault.delay_s):
            return
        if behaviour.kind == "hang" and fault._stopping.wait(behaviour.seconds):
            return
        if behaviour.kind == "drop":
            self.close_connection = True  # the handler returns without writing: the client sees EOF
            return
        if behaviour.kind == "status":
            code = int(behaviour.status_code or 500)
            headers = {"Retry-After": str(behaviour.retry_after)} if behaviour.retry_after is not None else {}
            error = {"message": fault.error_message, "type": "fault_injected", "code": code}
            self._json(code, {"error": error}, headers)
            return
        if behaviour.kind == "malformed":
            self._send(200, b'{"id": "chatcmpl-broken", "choices": [{"index": 0, "message": {"rol')
            return
        if behaviour.kind == "missing_choices":
            self._json(200, {"id": "chatcmpl-empty", "object": "chat.completion", "model": fault.model})
            return
        if body.get("stream") is True:
            self._stream(fault._completion(body))
            return
        self._json(200, fault._completion(body))

    def _stream(self, completion: dict[str, Any]) -> None:
        """Send the first choice as server-sent chat.completion.chunk events, a word at a time."""
        text = completion["choices"][0]["message"]["content"]
        pieces = [w + " " for w in text.split(" ")]
        pieces[-1] = pieces[-1][:-1]
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Connection", "close")
        self.end_headers()
        self.close_connection = True
        base = {"id": completion["id"], "object": "chat.completion.chunk", "created": completion["created"],
                "model": completion["model"]}
        events = [{**base, "choices": [{"index": 0, "delta": {"role": "assistant"}, "finish_reason": None}]}]
        events += [{**base, "choices": [{"index": 0, "delta": {"content": p}, "finish_reason": None}]} for p in pieces]
        events.append({**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
        for event in events:
            self.wfile.write(f"data: {json.dumps(event)}\n\n".encode())
            self.wfile.flush()
        self.wfile.write(b"data: [DONE]\n\n")

    def _json(self, code: int, payload: dict[str, Any], headers: dict[str, str] | None = None) -> None:
        self._send(code, json.dumps(payload).encode(), headers)

    def _send(self, code: int, data: bytes, headers: dict[str, str] | None = None) -> None:
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)


@contextlib.contextmanager
def fault_server(**options: Any) -> Iterator[FaultServer]:
    """Run a FaultServer on a free loopback port (or ``port=``) for the duration of the block."""
    server = FaultServer(**options)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def main(argv: list[str] | None = None) -> None:
    """Serve until SIGINT/SIGTERM; print "ready" once listening."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--delay", type=float, default=0.0, help="seconds each chat request takes")
    parser.add_argument("--slots", type=int, default=0, help="requests served at once (0: unlimited)")
    parser.add_argument("--one-choice", action="store_true", help="ignore n, like llama.cpp")
    parser.add_argument("--model", default=DEFAULT_MODEL)
    args = parser.parse_args(argv)
    server = FaultServer(port=args.port, delay_s=args.delay, slots=args.slots or None,
                         one_choice=args.one_choice, model=args.model)
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    server.start()
    print(f"ready {server.base_url}", flush=True)
    try:
        done.wait()
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
        print(f"stopped after {server.requests} chat requests; max concurrency {server.max_concurrency}",
              file=sys.stderr, flush=True)


if __name__ == "__main__":
    main()
