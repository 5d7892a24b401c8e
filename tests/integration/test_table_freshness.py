"""Every gunicorn worker serves a newly activated snapshot within a second, never a table it cached before.

A real gunicorn with two sync workers serves the app (test settings, this test's database) on loopback; its
access log names the worker (pid) of every request, so the test knows both workers served before and after.
"""
from __future__ import annotations

import os
import subprocess
import sys
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from django.db import connection

from avengers_web.models import ApiToken
from avengers_web.services import api_token_create
from devtools.local_platform import stop_group
from routing import services as routing_services
from tests.support.servers import free_port
from tests.support.snapshots import build_snapshot

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]

REPO = Path(__file__).resolve().parents[2]
MEANS = {"alpha": [0.9, 0.3, 0.5], "beta": [0.6, 0.8, 0.4], "gamma": [0.2, 0.1, 0.95]}
ASSIGNMENTS = [("gsm8k", 0), ("gsm8k", 0), ("mmlu", 1), ("mmlu", 1), ("mbpp", 2)]
WITHIN_S = 1.0  # the promise: a change reaches every worker within a second
IN_FLIGHT_S = 0.1  # the time a request takes to arrive on top of it


class Server:
    """gunicorn with two sync workers on a free loopback port, logging the pid that served each request."""

    def __init__(self, db_name: str, log_dir: Path) -> None:
        self.port = free_port()
        self.access_log = log_dir / "access.log"
        self.error_log = log_dir / "error.log"
        env = {**os.environ, "DJANGO_SETTINGS_MODULE": "config.settings_test", "AVENGERS_DB_NAME": db_name,
               "SECRET_KEY": "table-freshness-test-" + os.urandom(8).hex(), "ALLOWED_HOSTS": "127.0.0.1",
               "PYTHONPATH": str(REPO)}
        for name in ("DATABASE_URL", "AVENGERS_ROUTING_REFRESH_S"):  # the defaults are what is promised
            env.pop(name, None)
        self.process = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "config.wsgi:application", "--bind", f"127.0.0.1:{self.port}",
             "--workers", "2", "--worker-class", "sync", "--timeout", "120", "--chdir", str(REPO),
             "--access-logfile", str(self.access_log), "--access-logformat", "%(p)s %(s)s %(U)s",
             "--error-logfile", str(self.error_log)],
            cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, start_new_session=True)

    def served(self) -> list[str]:
        """The pid of every request logged so far, in order."""
        if not self.access_log.exists():
            return []
        return [line.split()[0] for line in self.access_log.read_text().splitlines() if line.strip()]

    def stop(self) -> None:
        stop_group(self.process, timeout=30)

    def log_tail(self) -> str:
        return self.error_log.read_text()[-3000:] if self.error_log.exists() else ""


def route_many(base: str, key: str, n: int) -> list[tuple[int, int | None]]:
    """POST n routing requests, four at a time; return each one's (status, snapshot id)."""
    def one(i: int) -> tuple[int, int | None]:
        response = httpx.post(base + "/api/v1/route", json={"query": f"What is {i} + {i}?"},
                              headers={"Authorization": f"Bearer {key}"}, timeout=60)
        return response.status_code, (response.json().get("snapshot") or {}).get("id") \
            if response.status_code == 200 else None

    with ThreadPoolExecutor(max_workers=4) as pool:
        return list(pool.map(one, range(n)))


def route_on_both_workers(server: Server, base: str, key: str, batch: int = 12) -> list[tuple[int, int | None]]:
    """Route in rounds until both workers have served some of them (the kernel picks the worker)."""
    start = len(server.served())
    results: list[tuple[int, int | None]] = []
    for _ in range(30):
        results += route_many(base, key, batch)
        if len(set(server.served()[start:])) >= 2:
            return results
    pytest.fail(f"one worker served every request: {Counter(server.served()[start:])}")


def test_both_workers_serve_a_newly_activated_snapshot_within_a_second(  # type: ignore[no-untyped-def]
        django_user_model, tmp_path) -> None:
    first = build_snapshot(version=1, means=MEANS, assignments=ASSIGNMENTS, label="first", seed=1)
    second = build_snapshot(version=2, means=MEANS, assignments=ASSIGNMENTS, label="second", seed=2)
    routing_services.snapshot_activate(snapshot=first)
    admin = django_user_model.objects.create_superuser(username="ops", password="ops-password-1", email="")
    token, key = api_token_create(user=admin, name="freshness")
    ApiToken.objects.filter(pk=token.pk).update(rate_limit_per_minute=1_000_000)

    server = Server(connection.settings_dict["NAME"], tmp_path)
    base = f"http://127.0.0.1:{server.port}"
    try:
        deadline = time.monotonic() + 120
        while True:  # ready, with the embedder loaded in the worker that answers
            assert server.process.poll() is None, server.log_tail()
            try:
                if route_many(base, key, 1)[0][0] == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, f"gunicorn did not route within 120 s:\n{server.log_tail()}"
            time.sleep(0.3)
        before = route_on_both_workers(server, base, key)
        assert before and all(result == (200, first.pk) for result in before), before

        # The worst case: each worker has just read which snapshot is active (after a pause, the first request
        # makes it read again) when another is activated.
        time.sleep(2.5)
        route_on_both_workers(server, base, key, batch=4)
        routing_services.snapshot_activate(snapshot=second)
        time.sleep(WITHIN_S + IN_FLIGHT_S)

        start = len(server.served())
        after = route_on_both_workers(server, base, key)
        workers = Counter(server.served()[start:])
        assert len(workers) == 2, workers
        stale = [result for result in after if result != (200, second.pk)]
        assert not stale, (f"{len(stale)} of {len(after)} requests {WITHIN_S + IN_FLIGHT_S:.1f} s after the "
                           f"activation were not served by snapshot {second.pk}: {Counter(stale)}; workers {workers}")
    finally:
        server.stop()
