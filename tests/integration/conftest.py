"""A real Celery worker over a real Redis, working on the test database."""
from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def start_worker(broker_url: str, db_name: str, log: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "avengers_web.settings_test", "AVENGERS_DB_NAME": db_name,
           "CELERY_BROKER_URL": broker_url, "CELERY_TASK_ALWAYS_EAGER": "false"}
    env.pop("DATABASE_URL", None)
    handle = log.open("wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "avengers_web", "worker", "--pool", "solo", "--loglevel", "INFO",
         "--hostname", f"test-{os.getpid()}@%h", "--without-gossip", "--without-mingle"],
        cwd=REPO, env=env, stdout=handle, stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the Celery worker exited with {process.returncode}:\n{log.read_text()[-3000:]}")
        if b"ready." in log.read_bytes():
            return process
        time.sleep(0.2)
    process.kill()
    raise RuntimeError(f"the Celery worker was not ready after 60 s:\n{log.read_text()[-3000:]}")


@pytest.fixture(scope="session")
def celery_worker_process(redis, django_db_setup, django_db_blocker) -> Iterator[subprocess.Popen[bytes]]:  # type: ignore[no-untyped-def]
    """Start `celery worker` as a separate process and send this process's tasks to it through Redis."""
    from django.db import connection

    from avengers_web.celery import app

    log = Path(tempfile.mkdtemp(prefix="celery-worker-")) / "worker.log"
    process = start_worker(redis.url, connection.settings_dict["NAME"], log)
    saved = (app.conf.broker_url, app.conf.task_always_eager, app.conf.broker_transport_options)
    app.conf.broker_url, app.conf.task_always_eager, app.conf.broker_transport_options = redis.url, False, {}
    app._pool = None  # drop any connection pool built for the previous broker
    try:
        yield process
    finally:
        app.conf.broker_url, app.conf.task_always_eager, app.conf.broker_transport_options = saved
        app._pool = None
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
