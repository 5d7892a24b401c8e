"""A real HTTP server on loopback that records every request and answers as a test says: echo the request's
headers back, serve an HTML page, redirect elsewhere. What a hostile or misconfigured "model endpoint" does.

    with reflecting_server(echo_headers(status=500)) as evil:
        ...  # point a model at evil.base_url
        assert evil.requests[0].headers.get("authorization") is None
"""
from __future__ import annotations

import contextlib
import json
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass(frozen=True)
class Seen:
    method: str
    path: str
    headers: dict[str, str]  # lower-case names


@dataclass(frozen=True)
class Answer:
    status: int
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)


Responder = Callable[[Seen], Answer]


@dataclass
class ReflectingServer:
    port: int
    requests: list[Seen]

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    @property
    def authorizations(self) -> list[str]:
        """The Authorization headers received, in order (requests without one left out)."""
        return [r.headers["authorization"] for r in self.requests if "authorization" in r.headers]


def echo_headers(*, status: int = 500, content_type: str = "text/plain") -> Responder:
    """Answer with every header of the request, the Authorization header first, then its method and path."""
    def respond(seen: Seen) -> Answer:
        first = {k: v for k, v in seen.headers.items() if k == "authorization"}
        body = json.dumps({"headers": {**first, **seen.headers}, "method": seen.method, "path": seen.path}).encode()
        return Answer(status, body, {"content-type": content_type})
    return respond


def html_page(text: str, *, status: int = 404) -> Responder:
    """Answer every request with an HTML page holding ``text`` (an internal page's content)."""
    def respond(seen: Seen) -> Answer:
        return Answer(status, f"<html><body><h1>{text}</h1></body></html>".encode(), {"content-type": "text/html"})
    return respond


def redirect_to(url: str, *, status: int = 302) -> Responder:
    """Answer every request with a redirect to ``url``."""
    def respond(seen: Seen) -> Answer:
        return Answer(status, b"moved", {"location": url, "content-type": "text/plain"})
    return respond


def model_list(*ids: str) -> Responder:
    """Answer like an OpenAI-compatible server: GET /v1/models lists ``ids``; anything else is a 404."""
    def respond(seen: Seen) -> Answer:
        if seen.method == "GET" and seen.path.endswith("/models"):
            body = json.dumps({"object": "list", "data": [{"id": i, "object": "model"} for i in ids]}).encode()
            return Answer(200, body, {"content-type": "application/json"})
        return Answer(404, b'{"error": {"message": "not found"}}', {"content-type": "application/json"})
    return respond


@contextlib.contextmanager
def reflecting_server(respond: Responder) -> Iterator[ReflectingServer]:
    """Serve ``respond`` on a free loopback port until the block ends."""
    requests: list[Seen] = []
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        def _handle(self) -> None:
            length = int(self.headers.get("content-length") or 0)
            if length:
                self.rfile.read(length)
            seen = Seen(self.command, self.path, {k.lower(): v for k, v in self.headers.items()})
            with lock:
                requests.append(seen)
            answer = respond(seen)
            try:
                self.send_response(answer.status)
                for name, value in answer.headers.items():
                    self.send_header(name, value)
                self.send_header("content-length", str(len(answer.body)))
                self.end_headers()
                self.wfile.write(answer.body)
            except (BrokenPipeError, ConnectionResetError):
                pass

        do_GET = do_POST = do_PUT = _handle  # noqa: N815 (http.server's naming)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield ReflectingServer(port=int(httpd.server_address[1]), requests=requests)
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)
