"""Run the platform's processes on one machine as in production: gunicorn serves the dashboard and the API with
DEBUG off, a Celery worker runs the tasks; stop them in order.

`manage.py serve` (`make run`) and `manage.py demo` (`make demo`) start them. This module imports no Django, so
that the Makefile can prepare the secret key before Django's settings (which need it) are read:

    python -m devtools.local_platform secret-key .data/secret_key
"""
from __future__ import annotations

import contextlib
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
# Two cores: two worker processes, each with threads, so that requests waiting on a model (answers, the
# OpenAI-compatible endpoint) do not hold a core's only worker. A process is about 300 MB with its embedder.
DEFAULT_WORKERS = 2
DEFAULT_THREADS = 4
# What a stop gives each process before it is killed: gunicorn finishes the requests in flight, the worker
# its tasks (a cancelled evaluation saves its answers within seconds).
STOP_TIMEOUT_S = 15.0


def ensure_secret_key(path: Path) -> Path:
    """Create a random secret key in ``path`` (mode 0600) unless one is there; return the path."""
    path = Path(path)
    try:
        if path.read_text().strip():
            return path
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.{os.getpid()}")
    descriptor = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w") as handle:
        handle.write(secrets.token_urlsafe(50) + "\n")
    os.replace(partial, path)  # atomic: a concurrent start reads the whole key or none
    return path


def environment(data_dir: Path, base: Mapping[str, str] | None = None) -> dict[str, str]:
    """Return the environment of the platform's processes: DEBUG off, a secret key, one data folder.

    A SECRET_KEY or SECRET_KEY_FILE in ``base`` is kept; otherwise the key is the one kept in
    ``data_dir/secret_key``, made on first use. Database connections are kept for 60 s unless DB_CONN_MAX_AGE
    says otherwise. Metrics of all processes are added up in ``data_dir/metrics``.
    """
    env = dict(os.environ if base is None else base)
    env["DEBUG"] = "false"
    env["AVENGERS_DATA_DIR"] = str(data_dir)
    env.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
    if not env.get("SECRET_KEY") and not env.get("SECRET_KEY_FILE"):
        env["SECRET_KEY_FILE"] = str(ensure_secret_key(data_dir / "secret_key"))
    # As docker/.env.example: a connection per request would cost each request a PostgreSQL connect.
    env.setdefault("DB_CONN_MAX_AGE", "60")
    if not env.get("PROMETHEUS_MULTIPROC_DIR"):
        env["PROMETHEUS_MULTIPROC_DIR"] = str(data_dir / "metrics")
    Path(env["PROMETHEUS_MULTIPROC_DIR"]).mkdir(parents=True, exist_ok=True)
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


def gunicorn_command(*, host: str, port: int, workers: int = DEFAULT_WORKERS,
                     threads: int = DEFAULT_THREADS) -> list[str]:
    """Return the command line of the web server."""
    return [
        sys.executable, "-m", "gunicorn", "config.wsgi:application",
        "--config", str(REPO / "config" / "gunicorn_conf.py"),
        "--bind", f"{host}:{port}",
        "--workers", str(workers), "--threads", str(threads), "--worker-class", "gthread",
        # A routed answer may wait for a model up to AVENGERS_ROUTE_DEADLINE_S (60 s by default).
        "--timeout", "120", "--graceful-timeout", str(int(STOP_TIMEOUT_S) - 5),
        "--chdir", str(REPO),
    ]  # fmt: skip


def celery_command(*, concurrency: int = 2, name: str = "avengers") -> list[str]:
    """Return the command line of the Celery worker (with the periodic sweeper, `--beat`)."""
    return [sys.executable, "-m", "celery", "-A", "config", "worker", "--loglevel", "INFO",
            "--concurrency", str(concurrency), "--hostname", f"{name}@%h", "--beat"]


def stop_group(process: subprocess.Popen[bytes], timeout: float = STOP_TIMEOUT_S) -> None:
    """Stop a process started in a session of its own, with its children: SIGTERM to the group, SIGKILL at the
    deadline. A process that has already exited is left alone."""
    if process.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()


@dataclass
class Processes:
    """The platform's child processes by name, in the order they started."""

    children: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    def spawn(self, name: str, command: list[str], env: Mapping[str, str]) -> subprocess.Popen[bytes]:
        # A new session keeps the terminal's Ctrl-C away from the children, so that they are stopped in order.
        process = subprocess.Popen(command, cwd=REPO, env=dict(env), start_new_session=True)
        self.children[name] = process
        return process

    def adopt(self, name: str, process: subprocess.Popen[bytes]) -> None:
        self.children[name] = process

    def first_exited(self) -> tuple[str, int] | None:
        """Return the name and exit code of a child that has exited, if any."""
        for name, process in self.children.items():
            code = process.poll()
            if code is not None:
                return name, code
        return None

    def terminate(self, names: Iterable[str]) -> None:
        """Ask these children to stop gracefully (SIGTERM), without waiting."""
        for name in names:
            process = self.children.get(name)
            if process is not None and process.poll() is None:
                process.send_signal(signal.SIGTERM)

    def wait(self, names: Iterable[str], timeout: float = STOP_TIMEOUT_S) -> None:
        """Wait for these children to exit; kill (with their process group) those still running at the deadline."""
        deadline = time.monotonic() + timeout
        for name in names:
            process = self.children.get(name)
            if process is None:
                continue
            try:
                process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(process.pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    process.kill()
                process.wait()

    def stop(self, names: Iterable[str], timeout: float = STOP_TIMEOUT_S) -> None:
        names = [n for n in names if n in self.children]
        self.terminate(names)
        self.wait(names, timeout)

    def stop_all(self, timeout: float = STOP_TIMEOUT_S) -> None:
        self.stop(list(self.children), timeout)


def main(argv: list[str] | None = None) -> int:
    """Command line: python -m devtools.local_platform secret-key PATH."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m devtools.local_platform", description=main.__doc__)
    parser.add_argument("action", choices=["secret-key"])
    parser.add_argument("path", type=Path, help="the file that keeps the key (made once, mode 0600)")
    args = parser.parse_args(argv)
    ensure_secret_key(args.path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
