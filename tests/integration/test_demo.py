"""`make demo`'s code path: start everything (a real local LLM included), serve the dashboard and the API with
gunicorn and DEBUG off while the demo sets up in the background, stop everything on Ctrl-C; a second start
reuses what the first one stored."""
from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest

from devtools import embedded_db
from tests.support.servers import free_port

REPO = Path(__file__).resolve().parents[2]
LLM_LINE = "Local LLM:  smollm2-135m"
pytestmark = pytest.mark.integration


@pytest.fixture
def tmp_path() -> Iterator[Path]:
    """A folder outside pytest's: each pytest session that starts makes /tmp/pytest-of-USER private again, and
    under root the demo's database runs as another user, which then could not reach its folder."""
    folder = Path(tempfile.mkdtemp(prefix="avengers-demo-test-"))
    yield folder
    embedded_db.stop(folder / "data" / "pg")
    shutil.rmtree(folder, ignore_errors=True)


def wait_for(predicate, timeout: float, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.3)
    raise AssertionError(f"timed out waiting for {what}")


def start_demo(tmp_path: Path, port: int, token: str, log: Path) -> subprocess.Popen[bytes]:
    data = tmp_path / "data"
    # As `make demo` does: DEBUG off and a secret key made once in the data folder.
    subprocess.run([sys.executable, "-m", "devtools.local_platform", "secret-key", str(data / "secret_key")],
                   cwd=REPO, check=True)
    env = {**os.environ, "AVENGERS_DATA_DIR": str(data), "AVENGERS_API_TOKEN": token, "DEBUG": "false",
           "SECRET_KEY_FILE": str(data / "secret_key"), "DJANGO_SETTINGS_MODULE": "config.settings",
           "PYTHONUNBUFFERED": "1"}
    for name in ("DATABASE_URL", "CELERY_BROKER_URL", "CELERY_TASK_ALWAYS_EAGER", "AVENGERS_DB_NAME", "SECRET_KEY",
                 "PROMETHEUS_MULTIPROC_DIR", "AVENGERS_PUBLIC_READ"):
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


def answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def wait_set_up(demo: subprocess.Popen[bytes], log: Path, base: str) -> None:
    wait_for(lambda: answers(base + "/login/") or demo.poll() is not None, 300, "the web server")
    assert demo.poll() is None, log.read_text()
    wait_for(lambda: "The demo is set up." in log.read_text() or demo.poll() is not None, 900, "the demo's setup")
    assert demo.poll() is None and "Setting up the demo failed" not in log.read_text(), log.read_text()


def log_in(browser: httpx.Client, base: str) -> None:
    browser.get("/login/")
    login = browser.post("/login/", data={"username": "demo", "password": "avengers-demo",
                                          "csrfmiddlewaretoken": browser.cookies["csrftoken"]},
                         headers={"Referer": base + "/login/"})
    assert login.status_code == 302


def test_the_demo_serves_with_gunicorn_before_the_local_llms_evaluation_ends_and_stops_what_it_started(tmp_path) -> None:  # type: ignore[no-untyped-def]
    port = free_port()
    token = "demo-token-for-the-test-0123456789"
    log = tmp_path / "demo.log"
    demo = start_demo(tmp_path, port, token, log)
    base = f"http://127.0.0.1:{port}"
    headers = {"Authorization": f"Bearer {token}"}
    try:
        # The dashboard answers while the demo still sets up: the local LLM's evaluation runs in the background,
        # its progress on the overview.
        wait_for(lambda: answers(base + "/login/") or demo.poll() is not None, 300, "the web server")
        assert demo.poll() is None, log.read_text()
        assert "The demo is set up." not in log.read_text()
        with httpx.Client(base_url=base, follow_redirects=False) as browser:
            log_in(browser, base)

            def evaluation_on_the_overview() -> bool:
                page = browser.get("/").text
                return 'data-testid="run-in-progress"' in page and "smollm2-135m on " in page

            wait_for(evaluation_on_the_overview, 600, "the local LLM's evaluation on the overview")
            assert "The demo is set up." not in log.read_text()

            # Served by gunicorn with DEBUG off: no debug page, static files through WhiteNoise.
            missing = browser.get("/no-such-page/")
            assert missing.status_code == 404 and missing.headers["server"].startswith("gunicorn")
            assert "Traceback" not in missing.text and "URLconf" not in missing.text and "DEBUG" not in missing.text
        css = httpx.get(base + "/static/css/app.css")
        assert css.status_code == 200 and css.headers["content-type"].startswith("text/css")
        processes = [" ".join(c.cmdline()) for c in psutil.Process(demo.pid).children(recursive=True)]
        assert any("gunicorn config.wsgi:application" in p for p in processes)
        assert not any("runserver" in p for p in processes)
        web = [c for c in psutil.Process(demo.pid).children() if "gunicorn" in " ".join(c.cmdline())]
        assert web[0].environ()["DEBUG"] == "false"
        secret = tmp_path / "data" / "secret_key"
        assert secret.stat().st_mode & 0o777 == 0o600 and len(secret.read_text().strip()) >= 50
        key = secret.read_text()

        wait_set_up(demo, log, base)
        text = log.read_text()
        assert f"Dashboard:  {base}/" in text and f"API token:  {token}" in text and "demo / avengers-demo" in text
        assert f"{base}/api/v1/answer" in text and f"base_url='{base}/v1'" in text and "model='avengers'" in text
        assert "'strategy': 'direct'" in text and '"samples": 3' in text
        with httpx.Client(base_url=base, follow_redirects=False) as browser:
            log_in(browser, base)
            page = browser.get("/").text
        assert re.search(r'data-testid="count-datasets">14<', page) and 'data-testid="count-queries">5989<' in page
        assert 'data-testid="in-progress"' not in page
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
        assert httpx.get(base + "/api/v1/models").status_code == 401

        # The dashboard's upload goes through the default file broker to the demo's own worker.
        with httpx.Client(base_url=base, follow_redirects=False) as browser:
            log_in(browser, base)
            assert browser.get(f"/snapshots/{snapshot['id']}/heatmap/").status_code == 200
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
        wait_set_up(demo, log, base)
        assert "already has its sample answered" in log.read_text() and secret.read_text() == key
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
