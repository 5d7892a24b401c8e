"""Start real servers on loopback for tests: a small LLM (OpenAI-compatible) and Redis."""

from __future__ import annotations

import contextlib
import dataclasses
import pathlib
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Callable, Iterator

from devtools import local_llm
from devtools.local_llm import free_port, smollm2_model_path

__all__ = ["LLMServer", "RedisServer", "free_port", "llm_server", "redis_server", "smollm2_model_path", "stop_process"]

INSTALL_HINT = local_llm.INSTALL_HINT
LLM_START_TIMEOUT = local_llm.START_TIMEOUT_S
REDIS_START_TIMEOUT = 20.0
STOP_TIMEOUT = 10.0


@dataclasses.dataclass(frozen=True)
class LLMServer:
    """A running llama-cpp-python OpenAI-compatible server."""

    base_url: str
    model: str
    port: int
    process: subprocess.Popen[bytes]


@dataclasses.dataclass(frozen=True)
class RedisServer:
    """A running throw-away redis-server."""

    url: str
    port: int
    process: subprocess.Popen[bytes]


def _wait_until(
    ready: Callable[[], bool], process: subprocess.Popen[bytes], log_path: pathlib.Path, name: str, timeout: float
) -> None:
    """Poll `ready()` until it is true; raise with the log tail if the process dies or time runs out."""
    local_llm.wait_until(ready, process, log_path, name, timeout)


def stop_process(process: subprocess.Popen[bytes], timeout: float = STOP_TIMEOUT) -> None:
    """Terminate a process, killing it if it has not exited after ``timeout`` seconds (one that has exited is left)."""
    local_llm.stop(process, timeout)


@contextlib.contextmanager
def _running(cmd: list[str], log_path: pathlib.Path) -> Iterator[subprocess.Popen[bytes]]:
    """Run `cmd` with output to `log_path`; stop it on exit, also on exceptions."""
    with log_path.open("wb") as log:
        process = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
    try:
        yield process
    finally:
        stop_process(process)


@contextlib.contextmanager
def llm_server(*, alias: str = "smollm2") -> Iterator[LLMServer]:
    """Run SmolLM2-135M behind llama-cpp-python's OpenAI-compatible server on a free loopback port."""
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="test-llm-") as tmp:
        log_path = pathlib.Path(tmp) / "llm_server.log"
        with local_llm.running(port=port, log_path=log_path, alias=alias) as process:
            yield LLMServer(base_url=f"http://127.0.0.1:{port}/v1", model=alias, port=port, process=process)


def _redis_ping(port: int) -> bool:
    """Return True if a Redis server on 127.0.0.1:port answers PING with +PONG."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1.0) as sock:
            sock.sendall(b"*1\r\n$4\r\nPING\r\n")
            return sock.recv(64).startswith(b"+PONG")
    except OSError:
        return False


@contextlib.contextmanager
def redis_server() -> Iterator[RedisServer]:
    """Run a throw-away, non-persistent redis-server on a free loopback port."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise RuntimeError("redis-server not found on PATH; install the Debian package `redis-server`")
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="test-redis-") as tmp:
        log_path = pathlib.Path(tmp) / "redis.log"
        cmd = [
            binary,
            "--port", str(port),
            "--bind", "127.0.0.1",
            "--save", "",
            "--appendonly", "no",
            "--dir", tmp,
        ]  # fmt: skip
        with _running(cmd, log_path) as process:
            _wait_until(lambda: _redis_ping(port), process, log_path, "redis-server", REDIS_START_TIMEOUT)
            yield RedisServer(url=f"redis://127.0.0.1:{port}/0", port=port, process=process)
