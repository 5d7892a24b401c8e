"""The embedded PostgreSQL comes up whatever state the last stop left: a server still shutting down, or the
files of a server killed with SIGKILL (issue 14, item 11). Each test runs its own server in a temp folder
(the ``pgdata`` fixture, tests/conftest.py)."""
from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from pathlib import Path

import psutil
import psycopg

from devtools import embedded_db


def postmaster_pid(pgdata: Path) -> int:
    return int((pgdata / "postmaster.pid").read_text().split("\n", 1)[0])


def pidfile_status(pgdata: Path) -> str:
    try:
        lines = (pgdata / "postmaster.pid").read_text().splitlines()
    except FileNotFoundError:
        return "gone"
    return lines[7].strip() if len(lines) > 7 else ""


def wait_for(predicate, timeout: float = 30.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def query(host: str, sql: str) -> object:
    with psycopg.connect(host=host, user="postgres", dbname="postgres", autocommit=True, connect_timeout=10) as conn:
        cursor = conn.execute(sql)
        return cursor.fetchone()[0] if cursor.description else None  # type: ignore[index]


def gone(pid: int) -> bool:
    """Tell whether a process has exited (this machine's init reaps orphans late: a zombie counts as gone)."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def child(pgdata: Path, title: str) -> psutil.Process:
    found = []
    for process in psutil.Process(postmaster_pid(pgdata)).children():
        try:
            if title in " ".join(process.cmdline()):
                found.append(process)
        except psutil.NoSuchProcess:  # a backend that just exited
            continue
    (process,) = found
    return process


def test_a_start_while_the_last_server_is_still_shutting_down_waits_for_it_and_comes_up(pgdata: Path) -> None:
    host = embedded_db.ensure_running(pgdata)
    query(host, "CREATE TABLE kept AS SELECT 42 AS answer")
    old_pid = postmaster_pid(pgdata)
    # Hold the fast shutdown (what `make demo`'s stop asks for) at its last step, the shutdown checkpoint.
    checkpointer = child(pgdata, "checkpointer")
    checkpointer.suspend()
    try:
        os.kill(old_pid, signal.SIGINT)
        wait_for(lambda: pidfile_status(pgdata) == "stopping")
        threading.Timer(1.0, checkpointer.resume).start()
        host = embedded_db.ensure_running(pgdata)
    finally:
        if checkpointer.is_running():
            checkpointer.resume()
    assert postmaster_pid(pgdata) != old_pid and gone(old_pid)
    assert query(host, "SELECT answer FROM kept") == 42


def test_a_start_after_the_server_was_killed_ends_its_busy_backend_and_recovers_the_data(pgdata: Path) -> None:
    host = embedded_db.ensure_running(pgdata)
    query(host, "CREATE TABLE kept AS SELECT 42 AS answer")
    # A backend in a long computation notices the postmaster's death only when it next waits, and keeps the old
    # server's shared memory meanwhile.
    busy = psycopg.connect(host=host, user="postgres", dbname="postgres", autocommit=True)
    backend = psutil.Process(busy.info.backend_pid)
    errors: list[Exception] = []

    def compute() -> None:
        try:
            busy.execute("SELECT count(*) FROM generate_series(1, 10000000000)")
        except psycopg.Error as exc:
            errors.append(exc)

    worker = threading.Thread(target=compute)
    worker.start()
    wait_for(lambda: backend.cpu_times().user > 0.2)
    old_pid = postmaster_pid(pgdata)
    os.kill(old_pid, signal.SIGKILL)
    wait_for(lambda: gone(old_pid))
    assert backend.is_running() and (pgdata / "postmaster.pid").exists()

    try:
        host = embedded_db.ensure_running(pgdata)
        worker.join(timeout=30)
        busy.close()
        assert errors and gone(backend.pid)
    finally:
        if not gone(backend.pid):
            backend.kill()
    assert query(host, "SELECT answer FROM kept") == 42
    assert embedded_db.is_running(pgdata) and postmaster_pid(pgdata) != old_pid


def test_a_start_recovers_when_the_killed_servers_pid_now_belongs_to_another_process(pgdata: Path) -> None:
    host = embedded_db.ensure_running(pgdata)
    old_pid = postmaster_pid(pgdata)
    os.kill(old_pid, signal.SIGKILL)
    wait_for(lambda: not embedded_db.is_running(pgdata))
    # After a reboot the pid in postmaster.pid may be any live process: here a sleep of ours.
    other = subprocess.Popen(["sleep", "60"])
    try:
        pidfile = pgdata / "postmaster.pid"
        lines = pidfile.read_text().split("\n")
        pidfile.write_text("\n".join([str(other.pid), *lines[1:]]))
        assert not embedded_db.is_running(pgdata)
        host = embedded_db.ensure_running(pgdata)
        assert query(host, "SELECT 1") == 1
        assert other.poll() is None  # not ours to stop
    finally:
        other.kill()
        other.wait()


def test_stop_waits_until_the_server_is_gone(pgdata: Path) -> None:
    embedded_db.ensure_running(pgdata)
    pid = postmaster_pid(pgdata)
    assert embedded_db.stop(pgdata) is True
    assert gone(pid)
    assert not (pgdata / "postmaster.pid").exists() and not embedded_db.is_running(pgdata)
    assert embedded_db.stop(pgdata) is False
