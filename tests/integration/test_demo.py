"""`make demo`'s code path: start everything (a real local LLM included), serve the dashboard and the API,
stop everything on Ctrl-C; a second start reuses what the first one stored."""
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
LLM_LINE = "Local LLM:  smollm2-135m"
pytestmark = pytest.mark.integration


def wait_for(predicate, timeout: float, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.3)
    raise AssertionError(f"timed out waiting for {what}")


def start_demo(tmp_path: Path, port: int, token: str, log: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "AVENGERS_DATA_DIR": str(tmp_path / "data"), "AVENGERS_API_TOKEN": token,
           "DJANGO_SETTINGS_MODULE": "avengers_web.settings", "PYTHONUNBUFFERED": "1"}
    for name in ("DATABASE_URL", "CELERY_BROKER_URL", "CELERY_TASK_ALWAYS_EAGER", "AVENGERS_DB_NAME"):
        env.pop(name, None)
    # Two train queries per dataset keep the local LLM's sample short on two cores (the default is five).
    return subprocess.Popen([sys.executable, "manage.py", "demo", "--port", str(port), "--llm-queries", "2"],
                            cwd=REPO, env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT)


def stop_demo(demo: subprocess.Popen[bytes], log: Path) -> None:
    demo.send_signal(signal.SIGINT)
    try:
        code = demo.wait(timeout=60)
    except subprocess.TimeoutExpired:
        demo.kill()
        raise
    assert code == 0, log.read_text()[-3000:]
    assert "Stopped." in log.read_text()


def wait_started(demo: subprocess.Popen[bytes], log: Path, base: str) -> None:
    wait_for(lambda: "Press Ctrl-C" in log.read_text() or demo.poll() is not None, 600, "the demo to start")
    assert demo.poll() is None, log.read_text()

    def up() -> bool:
        try:
            return httpx.get(base + "/", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    wait_for(up, 60, "the web server")


def test_the_demo_serves_real_data_and_a_real_llm_runs_uploads_in_its_worker_and_stops_what_it_started(tmp_path) -> None:  # type: ignore[no-untyped-def]
    port = free_port()
    token = "demo-token-for-the-test-0123456789"
    log = tmp_path / "demo.log"
    demo = start_demo(tmp_path, port, token, log)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_started(demo, log, base)
        text = log.read_text()
        assert f"Dashboard:  {base}/" in text and f"API token:  {token}" in text and "demo / avengers-demo" in text
        assert f"{base}/api/v1/answer" in text and f"base_url='{base}/v1'" in text and "model='avengers'" in text
        page = httpx.get(base + "/").text
        assert re.search(r'data-testid="count-datasets">14<', page) and 'data-testid="count-queries">5989<' in page
        headers = {"Authorization": f"Bearer {token}"}
        datasets = httpx.get(base + "/api/v1/datasets?page_size=100", headers=headers).json()
        assert datasets["count"] == 14
        assert sum(d["n_train"] for d in datasets["results"]) == 5608

        # The local LLM runs as a child of the demo and is registered with its endpoint.
        models = httpx.get(base + "/api/v1/models?page_size=100", headers=headers).json()
        assert models["count"] == 10
        (llm,) = [m for m in models["results"] if m["name"] == "smollm2-135m"]
        assert llm["base_url"].startswith("http://127.0.0.1:") and f"{LLM_LINE} at {llm['base_url']}" in text
        served = httpx.get(llm["base_url"] + "/models", timeout=5).json()
        assert [m["id"] for m in served["data"]] == ["smollm2"]
        children = psutil.Process(demo.pid).children(recursive=True)
        assert any("llama_cpp.server" in " ".join(c.cmdline()) for c in children)

        # It was evaluated on a small real sample: answers stored and graded, through the evaluation engine.
        runs = httpx.get(base + "/api/v1/evaluations?page_size=100", headers=headers).json()["results"]
        # Two queries of each of the 11 datasets of multiple-choice, maths and short-answer questions.
        assert len(runs) == 11 and all(r["status"] == "done" and r["models"] == ["smollm2-135m"] for r in runs)
        progress = [m for r in runs for m in r["progress"]["models"] if m["model_name"] == "smollm2-135m"]
        assert sum(m["done"] for m in progress) == 2 * len(runs) and sum(m["graded"] for m in progress) == 2 * len(runs)
        samples = httpx.get(base + f"/api/v1/evaluations/{runs[0]['id']}/samples", headers=headers).json()
        assert samples["results"] and all(s["model"] == "smollm2-135m" and s["text"] and s["score"] is not None
                                          for s in samples["results"])

        # It ends with an active K=64 snapshot of the demo data, derived with the local LLM in its pool and team.
        snapshots = httpx.get(base + "/api/v1/snapshots", headers=headers).json()["results"]
        (snapshot,) = [s for s in snapshots if s["is_active"]]
        assert len(snapshots) == 2 and snapshot["status"] == "done" and snapshot["k"] == 64
        assert snapshot["kind"] == "add_model" and len(snapshot["pool"]) == 10
        assert "smollm2-135m" in snapshot["pool"] and "smollm2-135m" in snapshot["team"]
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
        assert len(children) >= 3
    finally:
        stop_demo(demo, log)
    assert not any(c.is_running() and c.status() != psutil.STATUS_ZOMBIE for c in children)
    assert not embedded_db.is_running(tmp_path / "data" / "pg")

    # A second start reuses everything: no new evaluation, no new snapshot, the model points at the new server.
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    log = tmp_path / "demo-again.log"
    demo = start_demo(tmp_path, port, token, log)
    try:
        wait_started(demo, log, base)
        assert "already has its sample answered" in log.read_text()
        assert httpx.get(base + "/api/v1/evaluations", headers=headers).json()["count"] == len(runs)
        snapshots = httpx.get(base + "/api/v1/snapshots", headers=headers).json()["results"]
        assert len(snapshots) == 2 and [s["id"] for s in snapshots if s["is_active"]] == [snapshot["id"]]
        (again,) = [m for m in httpx.get(base + "/api/v1/models?page_size=100", headers=headers).json()["results"]
                    if m["name"] == "smollm2-135m"]
        assert again["id"] == llm["id"]
        assert httpx.get(again["base_url"] + "/models", timeout=5).status_code == 200
    finally:
        stop_demo(demo, log)
    assert not embedded_db.is_running(tmp_path / "data" / "pg")
