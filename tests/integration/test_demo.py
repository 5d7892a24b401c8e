"""`make demo`'s code path: start everything, serve the dashboard and the API, stop everything on Ctrl-C."""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psutil
import pytest

from avengers_web import embedded_db
from tests.support.servers import free_port

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.integration


def wait_for(predicate, timeout: float, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.3)
    raise AssertionError(f"timed out waiting for {what}")


def test_the_demo_serves_real_data_runs_uploads_in_its_worker_and_stops_what_it_started(tmp_path) -> None:  # type: ignore[no-untyped-def]
    port = free_port()
    token = "demo-token-for-the-test-0123456789"
    env = {**os.environ, "AVENGERS_DATA_DIR": str(tmp_path / "data"), "AVENGERS_API_TOKEN": token,
           "DJANGO_SETTINGS_MODULE": "avengers_web.settings", "PYTHONUNBUFFERED": "1"}
    for name in ("DATABASE_URL", "CELERY_BROKER_URL", "CELERY_TASK_ALWAYS_EAGER", "AVENGERS_DB_NAME"):
        env.pop(name, None)
    log = tmp_path / "demo.log"
    demo = subprocess.Popen([sys.executable, "manage.py", "demo", "--port", str(port)], cwd=REPO, env=env,
                            stdout=log.open("wb"), stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: "Press Ctrl-C" in log.read_text() or demo.poll() is not None, 240, "the demo to start")
        assert demo.poll() is None, log.read_text()
        text = log.read_text()
        assert f"Dashboard:  {base}/" in text and f"API token:  {token}" in text and "demo / avengers-demo" in text

        def up() -> bool:
            try:
                return httpx.get(base + "/", timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        wait_for(up, 60, "the web server")
        page = httpx.get(base + "/").text
        assert re.search(r'data-testid="count-datasets">14<', page) and 'data-testid="count-queries">5989<' in page
        headers = {"Authorization": f"Bearer {token}"}
        datasets = httpx.get(base + "/api/v1/datasets?page_size=100", headers=headers).json()
        assert datasets["count"] == 14
        assert sum(d["n_train"] for d in datasets["results"]) == 5608
        assert httpx.get(base + "/api/v1/models", headers=headers).json()["count"] == 9
        # It ends with an active K=64 snapshot of the demo data, so leaderboards work without a step by hand.
        (snapshot,) = httpx.get(base + "/api/v1/snapshots", headers=headers).json()["results"]
        assert snapshot["is_active"] and snapshot["status"] == "done" and snapshot["k"] == 64
        clusters = httpx.get(base + f"/api/v1/snapshots/{snapshot['id']}/clusters", headers=headers).json()
        assert len(clusters) == 64 and sum(c["size"] for c in clusters) == 5608
        assert httpx.get(base + f"/snapshots/{snapshot['id']}/heatmap/").status_code == 200
        assert httpx.get(base + "/api/v1/models").status_code == 401

        # The dashboard's upload goes through the default file broker to the demo's own worker.
        with httpx.Client(base_url=base, follow_redirects=False) as browser:
            browser.get("/login/")
            csrf = browser.cookies["csrftoken"]
            login = browser.post("/login/", data={"username": "demo", "password": "avengers-demo",
                                                  "csrfmiddlewaretoken": csrf}, headers={"Referer": base + "/login/"})
            assert login.status_code == 302
            sent = browser.post("/datasets/upload/", data={"name": "demo-upload", "csrfmiddlewaretoken":
                                browser.cookies["csrftoken"]}, files={"file": ("q.csv", b"query,gold\nA?,a\nB?,b\n")},
                                headers={"Accept": "application/json", "Referer": base + "/datasets/upload/"})
            assert sent.status_code == 202, sent.text
            status_url = sent.json()["status_url"]

        def imported() -> bool:
            return httpx.get(base + status_url, headers=headers).json()["status"] in ("done", "failed")

        wait_for(imported, 60, "the demo worker to import the upload")
        assert httpx.get(base + status_url, headers=headers).json()["status"] == "done"
        children = psutil.Process(demo.pid).children(recursive=True)
        assert len(children) >= 2
    finally:
        demo.send_signal(signal.SIGINT)
        try:
            code = demo.wait(timeout=60)
        except subprocess.TimeoutExpired:
            demo.kill()
            raise
    assert code == 0, log.read_text()[-3000:]
    assert "Stopped." in log.read_text()
    assert not any(c.is_running() and c.status() != psutil.STATUS_ZOMBIE for c in children)
    assert not embedded_db.is_running(tmp_path / "data" / "pg")
