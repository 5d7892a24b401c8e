"""GET /healthz, /readyz and /metrics: what they check, who may read them, and what the metrics count.

Real PostgreSQL, the real MiniLM embedder, real model servers on loopback (tests.support.fault_server), a real
redis-server for the broker check, and a real gunicorn with two workers for the multi-process metrics.
"""
from __future__ import annotations

import concurrent.futures
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from django.test import Client
from prometheus_client.mmap_dict import MmapedDict, mmap_key
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.parser import text_string_to_metric_families

from config.celery import app as celery_app
from devtools.local_llm import free_port
from devtools.local_platform import stop_group
from avengers_web.services import api_token_create
from evaluation import providers
from evaluation.runs import services
from evaluation.core.generation import ChatRequest, GenerationError, RetryPolicy
from routing.serving import tables
from tests.evaluation.runs.test_engine import make_model, run_inline
from tests.support.math_queries import make_math_dataset
# Its fixtures: an active 3-cluster snapshot (MiniLM), and this process's routing caches emptied around each test.
from tests.routing.serving.test_api import fresh_service, point_at, snapshot, team_in_order  # noqa: F401
from tests.support.fakes import FakeLLMClient
from tests.support.fault_server import fault_server, status

pytestmark = pytest.mark.django_db

REPO = Path(__file__).resolve().parents[2]
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def parse(text: str) -> Samples:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def scrape(client: Client | None = None) -> Samples:
    response = (client or Client()).get("/metrics")
    assert response.status_code == 200, response.content
    assert response["Content-Type"].startswith("text/plain")
    return parse(response.content.decode())


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


# --- /healthz and /readyz -----------------------------------------------------------------------------------


def test_healthz_answers_ok_to_anyone_without_asking_the_database(django_assert_num_queries) -> None:
    with django_assert_num_queries(0):
        response = Client().get("/healthz")
    assert response.status_code == 200 and response.json() == {"status": "ok"}
    assert "no-cache" in response["Cache-Control"]


def test_readyz_is_503_with_the_reason_while_no_snapshot_is_active() -> None:
    response = Client().get("/readyz")
    assert response.status_code == 503
    body = response.json()
    assert body["status"] == "unavailable"
    assert body["checks"]["database"] == {"ok": True}
    assert body["checks"]["broker"]["ok"] is True
    assert body["checks"]["snapshot"]["ok"] is False and body["checks"]["embedder"]["ok"] is False
    assert any(r.startswith("snapshot: No router snapshot is active") for r in body["reasons"]), body


def test_readyz_is_200_once_a_snapshot_is_active_and_loads_its_table_and_embedder(snapshot) -> None:
    response = Client().get("/readyz")
    assert response.status_code == 200, response.content
    body = response.json()
    assert body["status"] == "ok" and "reasons" not in body
    assert body["checks"]["snapshot"] == {"ok": True, "id": snapshot.pk, "version": 1, "router": "cluster"}
    assert body["checks"]["embedder"] == {"ok": True, "name": "minilm"}
    # Deactivated: not ready any more (once the process re-reads which snapshot is active).
    snapshot.is_active = False
    snapshot.save(update_fields=["is_active"])
    tables.forget()
    assert Client().get("/readyz").status_code == 503


def test_readyz_names_an_unreachable_broker_without_showing_its_url_or_password(monkeypatch) -> None:
    port = free_port()  # nothing listens there
    monkeypatch.setattr(celery_app.conf, "broker_url", f"redis://:s3cret-broker-pw@127.0.0.1:{port}/0")
    response = Client().get("/readyz")
    assert response.status_code == 503
    body = response.json()
    assert body["checks"]["broker"]["ok"] is False and body["checks"]["broker"]["transport"] == "redis"
    assert any(r.startswith("broker: the broker cannot be reached") for r in body["reasons"])
    text = response.content.decode()
    assert "s3cret-broker-pw" not in text and str(port) not in text


def test_readyz_checks_a_real_redis_broker(redis, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setattr(celery_app.conf, "broker_url", redis.url)
    body = Client().get("/readyz").json()
    assert body["checks"]["broker"] == {"ok": True, "transport": "redis"}


def test_readyz_notices_a_missing_file_broker_folder(monkeypatch, tmp_path) -> None:
    missing = str(tmp_path / "gone")
    monkeypatch.setitem(celery_app.conf, "broker_transport_options",
                        {"data_folder_in": missing, "data_folder_out": missing, "processed_folder": missing})
    body = Client().get("/readyz").json()
    assert body["checks"]["broker"]["ok"] is False and "file broker" in body["checks"]["broker"]["reason"]
    assert missing not in Client().get("/readyz").content.decode()


# --- who may read /metrics ----------------------------------------------------------------------------------


def test_metrics_are_served_to_loopback_and_refused_to_other_addresses_and_proxied_requests() -> None:
    assert Client().get("/metrics").status_code == 200  # the test client's address is 127.0.0.1
    assert Client(REMOTE_ADDR="::1").get("/metrics").status_code == 200
    assert Client(REMOTE_ADDR="203.0.113.9").get("/metrics").status_code == 403
    # Through a reverse proxy on this host the peer is loopback; the forwarded header says it is not local.
    proxied = Client().get("/metrics", HTTP_X_FORWARDED_FOR="203.0.113.9")
    assert proxied.status_code == 403 and "AVENGERS_METRICS_ALLOW" in proxied.json()["detail"]


def test_metrics_need_the_token_once_one_is_set_unless_the_address_is_allowed(settings) -> None:
    settings.METRICS_TOKEN = "metrics-token-0123456789"
    settings.METRICS_ALLOW = ["10.1.0.0/16"]
    outside = Client(REMOTE_ADDR="203.0.113.9")
    refused = outside.get("/metrics")
    assert refused.status_code == 401 and refused["WWW-Authenticate"].startswith("Bearer")
    assert outside.get("/metrics", HTTP_AUTHORIZATION="Bearer wrong-token").status_code == 401
    assert Client().get("/metrics").status_code == 401  # loopback is no longer in the allowed networks
    served = outside.get("/metrics", HTTP_AUTHORIZATION="Bearer metrics-token-0123456789")
    assert served.status_code == 200 and b"avengers_" in served.content
    assert Client(REMOTE_ADDR="10.1.2.3").get("/metrics").status_code == 200


# --- what the metrics count -----------------------------------------------------------------------------------


def test_a_routed_request_counts_its_decision_and_the_latency_of_each_stage(api, snapshot) -> None:
    before = scrape()
    response = api.post("/api/v1/route", {"query": "What is 12 times 12?"}, format="json")
    assert response.status_code == 200, response.content
    cluster = str(response.json()["cluster"])
    after = scrape()

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    # No model has an endpoint, so none is chosen; /route samples nothing, so it has no strategy.
    assert delta("avengers_routing_decisions_total", endpoint="route", model="none", cluster=cluster,
                 strategy="none") == 1
    assert delta("avengers_routing_requests_total", endpoint="route", status="200") == 1
    for stage in ("embed", "decide", "total"):
        assert delta("avengers_routing_stage_seconds_count", endpoint="route", stage=stage) == 1
        assert delta("avengers_routing_stage_seconds_bucket", endpoint="route", stage=stage, le="+Inf") == 1
    assert delta("avengers_routing_stage_seconds_count", endpoint="route", stage="generate") == 0
    assert delta("avengers_routing_stage_seconds_sum", endpoint="route", stage="total") > 0


def test_an_answer_counts_the_fallback_its_reason_and_the_models_latency_tokens_and_errors(api, snapshot) -> None:
    query = "Which planet is known as the red planet?"
    team_order = team_in_order(snapshot, query)
    before = scrape()
    with fault_server(default=status(500), model="metrics-broken") as broken, \
            fault_server(content="Answer: Mars", model="metrics-fine") as fine:
        point_at(team_order[0], broken)
        point_at(team_order[1], fine)
        body = api.post("/api/v1/answer", {"query": query, "strategy": "direct", "task_type": "qa"},
                        format="json").json()
    assert body["model"] == team_order[1] and body["fallback"] is True
    after = scrape()

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert delta("avengers_routing_fallbacks_total", endpoint="answer", reason="server_error") == 1
    assert delta("avengers_routing_decisions_total", endpoint="answer", model=team_order[1],
                 cluster=str(body["decision"]["cluster"]), strategy="direct") == 1
    for stage in ("embed", "decide", "generate", "vote", "total"):
        assert delta("avengers_routing_stage_seconds_count", endpoint="answer", stage=stage) == 1
    assert delta("avengers_generation_errors_total", model="metrics-broken", kind="server_error") == 1
    assert delta("avengers_generation_seconds_count", model="metrics-fine") == 1
    assert delta("avengers_generation_seconds_count", model="metrics-broken") == 0
    assert delta("avengers_generation_tokens_total", model="metrics-fine", kind="completion") == \
        body["usage"]["completion_tokens"] > 0


def test_the_circuit_state_of_an_endpoint_is_a_gauge_labelled_without_its_credentials() -> None:
    with fault_server(script=[status(500)] * 5, model="metrics-circuit") as server:
        base_url = server.base_url.replace("http://", "http://someone:url-pw-secret@")
        client = providers.OpenAIChatClient(base_url=base_url, retry=RetryPolicy(max_attempts=1))
        label = f"http://127.0.0.1:{server.port}/v1"
        assert value(scrape(), "avengers_circuit_state", endpoint=label) == 0
        request = ChatRequest(model="metrics-circuit", messages=({"role": "user", "content": "hi"},))
        for _ in range(5):
            with pytest.raises(GenerationError):
                client.complete(request)
        samples = scrape()
        assert value(samples, "avengers_circuit_state", endpoint=label) == 2
        assert value(samples, "avengers_circuit_opened_total", endpoint=label) == 1
        assert value(samples, "avengers_generation_errors_total", model="metrics-circuit", kind="server_error") == 5
        client.breaker.reset_after_s = 0  # the wait is over: the next call is the trial, and the server has recovered
        client.complete(request)
        assert value(scrape(), "avengers_circuit_state", endpoint=label) == 0
    assert "url-pw-secret" not in Client().get("/metrics").content.decode()


def test_queue_depth_is_read_from_the_database_and_graded_samples_are_counted() -> None:
    dataset = make_math_dataset(4)
    model = make_model("metrics-eval-model")
    run = services.evaluation_run_create(dataset=dataset, models=[model], samples=2, batch_size=3, queue=False)
    before = scrape()
    assert value(before, "avengers_evaluation_batches", status="pending") == 2  # 4 queries in batches of 3
    assert value(before, "avengers_evaluation_batches", status="running") == 0
    run_inline(run, FakeLLMClient(reply=lambda request, i: "\\boxed{4}"))
    after = scrape()
    assert value(after, "avengers_evaluation_batches", status="pending") == 0
    graded = ("avengers_evaluation_samples_total", {"model": "metrics-eval-model", "result": "graded"})
    assert value(after, graded[0], **graded[1]) - value(before, graded[0], **graded[1]) == 4 * 2


# --- several gunicorn workers -----------------------------------------------------------------------------------


def _per_process(folder: Path, name: str, labels: dict[str, str]) -> dict[int, float]:
    """The value each process wrote to its own file, by pid."""
    counts = {}
    for file in folder.glob("counter_*.db"):
        pid = int(file.stem.split("_")[1])
        for family in MultiProcessCollector.merge([str(file)], accumulate=False):
            for sample in family.samples:
                if sample.name == name and sample.labels == labels:
                    counts[pid] = sample.value
    return counts


@pytest.mark.django_db(transaction=True)
def test_metrics_add_up_the_requests_served_by_every_gunicorn_worker(snapshot, user, tmp_path) -> None:
    from django.db import connection

    _, key = api_token_create(user=user, name="metrics")
    folder = tmp_path / "metrics"
    folder.mkdir()
    # What a process of an earlier run left: gunicorn's start removes it, or it would add 1000 to the sum below.
    gone = subprocess.Popen(["true"])
    gone.wait()
    stale = MmapedDict(str(folder / f"counter_{gone.pid}.db"))
    stale.write_value(mmap_key("avengers_routing_requests", "avengers_routing_requests_total", ["endpoint", "status"],
                               ["route", "200"], "Routed requests by endpoint and HTTP status."), 1000.0, 0.0)
    stale.close()
    port = free_port()
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "config.settings_test",
           "AVENGERS_DB_NAME": connection.settings_dict["NAME"], "PROMETHEUS_MULTIPROC_DIR": str(folder),
           "DEBUG": "false", "SECRET_KEY": "test-only-secret-key-for-gunicorn-0123456789"}
    env.pop("DATABASE_URL", None)
    log = tmp_path / "gunicorn.log"
    server = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "-c", str(REPO / "config" / "gunicorn_conf.py"), "--workers", "2",
         "--bind", f"127.0.0.1:{port}", "config.wsgi:application"],
        cwd=REPO, env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            assert server.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline, "gunicorn did not answer:\n" + log.read_text()[-3000:]
            try:
                if httpx.get(f"{base}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.2)

        def route(i: int) -> int:
            # A new connection each time, so the kernel hands requests to whichever worker is free.
            return httpx.post(f"{base}/api/v1/route", json={"query": f"What is {i} plus {i}?"},
                              headers={"Authorization": f"Bearer {key}"}, timeout=60).status_code

        labels = {"endpoint": "route", "status": "200"}
        sent = 0
        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            while len(_per_process(folder, "avengers_routing_requests_total", labels)) < 2:
                assert sent < 400, "every request went to the same worker"
                assert list(pool.map(route, range(sent, sent + 8))) == [200] * 8
                sent += 8
        per_worker = _per_process(folder, "avengers_routing_requests_total", labels)
        assert len(per_worker) == 2 and all(v > 0 for v in per_worker.values())
        assert sum(per_worker.values()) == sent

        def served_total() -> float:
            scraped = httpx.get(f"{base}/metrics", timeout=10)
            assert scraped.status_code == 200, scraped.text
            return value(parse(scraped.text), "avengers_routing_requests_total", **labels)

        # Any worker answers for both: each scrape shows the sum.
        assert [served_total() for _ in range(4)] == [sent] * 4
        # A worker that exits (gunicorn replaces it; the child_exit hook runs): what it counted still counts.
        os.kill(next(iter(per_worker)), signal.SIGTERM)
        time.sleep(2)
        assert served_total() == sent
        assert "Traceback" not in log.read_text()
    finally:
        stop_group(server, timeout=30)


def test_a_celery_worker_process_that_ends_drops_its_live_gauges_but_not_its_counters(settings, tmp_path) -> None:
    from celery.signals import worker_process_shutdown

    settings.METRICS_MULTIPROC_DIR = str(tmp_path)
    gauge, counter = tmp_path / f"gauge_livemax_{os.getpid()}.db", tmp_path / f"counter_{os.getpid()}.db"
    gauge.write_bytes(b"")
    counter.write_bytes(b"")
    worker_process_shutdown.send(sender=None, pid=os.getpid(), exitcode=0)
    assert not gauge.exists() and counter.exists()


def test_a_bad_metrics_network_or_an_empty_multiprocess_folder_stops_the_start() -> None:
    from tests.config.test_settings import READ_SETTINGS, _run, _settings_env

    bad = _run(READ_SETTINGS, _settings_env(SECRET_KEY="x" * 60, AVENGERS_METRICS_ALLOW="127.0.0.1/8,not-a-net"))
    assert bad.returncode != 0 and "AVENGERS_METRICS_ALLOW: 'not-a-net' is not an address" in bad.stderr
    empty = _run(READ_SETTINGS, _settings_env(SECRET_KEY="x" * 60, PROMETHEUS_MULTIPROC_DIR=""))
    assert empty.returncode != 0 and "PROMETHEUS_MULTIPROC_DIR is set but empty" in empty.stderr
