"""Evaluation runs through real Celery workers over Redis, against a real LLM and a real server that misbehaves.

The database counts are the proof: every (model, query, sample) has exactly one stored response, faults
are retried a bounded number of times, and a worker killed in the middle of a run loses nothing and
repeats nothing.
"""
from __future__ import annotations

import json
import os
import signal
import tempfile
import time
from collections import Counter
from pathlib import Path

import pytest

from evaluation.models import Dataset, EvaluationRun, LanguageModel, ModelResponse, Query
from evaluation.selectors import run_progress
from tests.conftest import SHARED_DATA, sending_tasks_to, start_worker, stop_worker
from tests.support.fault_server import drop, fault_server, hang, malformed, ok, status

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]


def gsm8k_dataset(n: int, name: str = "gsm8k-sample") -> Dataset:
    """The first n real GSM8K train queries of the LLMRouter records, with their gold answers."""
    dataset = Dataset.objects.create(name=name, split_seed=42, source="LLMRouter records (MIT)")
    path = SHARED_DATA / "llmrouter" / "records.jsonl"
    assert path.exists(), f"{path} is missing"
    added = 0
    with path.open() as lines:
        for line in lines:
            record = json.loads(line)
            if record["dataset"] != "gsm8k" or record.get("split") != "train":
                continue
            Query.objects.create(dataset=dataset, external_id=record["id"], text=record["query"],
                                 text_hash=str(added), gold=record["gold"], task_type="math", split="train",
                                 split_source="file")
            added += 1
            if added == n:
                break
    return dataset


def wait_for_run(run_id: int, timeout: float) -> EvaluationRun:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        run = EvaluationRun.objects.get(pk=run_id)
        if not run.is_active:
            return run
        time.sleep(0.3)
    run = EvaluationRun.objects.get(pk=run_id)
    raise AssertionError(f"run {run_id} still {run.status} after {timeout} s: {run_progress(run)}")


def own_worker_setup(redis, broker_db: int, name: str, queries: int) -> tuple[str, str, Path, Dataset]:  # type: ignore[no-untyped-def]
    """A Redis database of its own as the broker, the test database's name, a folder for worker logs and
    a dataset `name` of the first `queries` GSM8K queries: what a test that starts its own worker needs."""
    from django.db import connection

    broker = redis.url.rsplit("/", 1)[0] + f"/{broker_db}"
    folder = Path(tempfile.mkdtemp(prefix=f"{name}-"))
    return broker, connection.settings_dict["NAME"], folder, gsm8k_dataset(queries, name=name)


def test_a_real_llm_evaluation_runs_in_a_celery_worker_and_stores_every_sample(  # type: ignore[no-untyped-def]
    celery_worker_process, llm, api
) -> None:
    dataset = gsm8k_dataset(4)
    response = api.post("/api/v1/models", {"name": "smollm2", "base_url": llm.base_url, "served_model_id": llm.model,
                                           "max_concurrency": 2}, format="json")
    assert response.status_code == 201, response.json()
    response = api.post("/api/v1/evaluations", {
        "dataset": dataset.name, "models": ["smollm2"], "split": "train", "samples": 2,
        "params": {"temperature": 0.7, "max_tokens": 48, "seed": 3},
    }, format="json")
    assert response.status_code == 201, response.json()
    run = wait_for_run(response.json()["id"], timeout=240)
    assert run.status == "done", run.message
    responses = ModelResponse.objects.filter(run=run)
    assert responses.count() == 8 and not responses.exclude(error="").exists()
    for sample in responses:
        # Mechanics, not accuracy: the model is tiny. Each sample was generated, graded and recorded in full.
        assert sample.text and sample.finish_reason in ("stop", "length")
        assert sample.correct is not None and sample.grade_reason and 0 <= sample.score <= 1
        assert sample.completion_tokens and sample.prompt_tokens and sample.latency_ms > 0
        assert "\\boxed" in sample.prompt and sample.params["seed"] == 3 + sample.sample_index
    detail = api.get(f"/api/v1/evaluations/{run.pk}").json()
    assert detail["progress"]["done"] == 8 and detail["progress"]["remaining"] == 0
    assert detail["progress"]["models"][0]["graded"] == 8
    samples = api.get(f"/api/v1/evaluations/{run.pk}/samples?model=smollm2").json()
    assert samples["count"] == 8 and samples["results"][0]["gold"] == dataset.queries.order_by("id")[0].gold


def test_server_faults_are_retried_a_bounded_number_of_times_and_nothing_is_stored_twice(  # type: ignore[no-untyped-def]
    redis, django_db_setup
) -> None:
    broker, db, folder, dataset = own_worker_setup(redis, 3, "faults", queries=8)
    faults = [status(500), status(429, retry_after=1), hang(5), drop(), malformed(), status(503)]
    # One request at a time, each fault followed by a good reply: every fault costs exactly one retry,
    # and the circuit breaker (5 failures in a row) never opens.
    script = [step for fault in faults for step in (fault, ok())]
    with fault_server(script=script, content=lambda body: "The answer is \\boxed{42}") as server:
        model = LanguageModel.objects.create(name="flaky", base_url=server.base_url, max_concurrency=1)
        worker = start_worker(broker, db, folder / "worker.log", name="faults",
                              extra_env={"AVENGERS_GENERATION_TIMEOUT_S": "2", "AVENGERS_GENERATION_MAX_ATTEMPTS": "3"})
        try:
            with sending_tasks_to(broker):
                from evaluation.runs.services import evaluation_run_create

                run = evaluation_run_create(dataset=dataset, models=[model], samples=2, params={"seed": 1})
                run = wait_for_run(run.pk, timeout=120)
        finally:
            stop_worker(worker)
        assert run.status == "done", (run.message, (folder / "worker.log").read_text()[-3000:])
        stored = ModelResponse.objects.filter(model=model)
        assert stored.count() == 16 and not stored.exclude(error="").exists()
        # Each fault cost exactly one extra attempt: 16 requests that succeed plus the 6 that failed,
        # and the attempts each response records add up to what the server saw.
        assert server.requests == 16 + len(faults)
        assert Counter(stored.values_list("attempts", flat=True)) == {1: 16 - len(faults), 2: len(faults)}
        keys = Counter(stored.values_list("query_id", "sample_index"))
        assert set(keys.values()) == {1}


def test_a_worker_killed_mid_run_loses_no_finished_work_and_the_next_worker_does_only_the_rest(  # type: ignore[no-untyped-def]
    redis, django_db_setup
) -> None:
    broker, db, folder, dataset = own_worker_setup(redis, 4, "kill", queries=24)
    env = {"AVENGERS_EVAL_HEARTBEAT_S": "0.5", "AVENGERS_EVAL_STALE_AFTER_S": "3", "AVENGERS_EVAL_SWEEP_EVERY_S": "1"}
    with fault_server(delay_s=0.4, slots=2, content=lambda body: "Answer: 7") as server:
        model = LanguageModel.objects.create(name="steady", base_url=server.base_url, max_concurrency=2)
        first = start_worker(broker, db, folder / "first.log", extra_env=env, beat=True, name="first")
        second = None
        try:
            with sending_tasks_to(broker):
                from evaluation.runs.services import evaluation_run_create

                run = evaluation_run_create(dataset=dataset, models=[model], samples=1, params={"seed": 5},
                                            batch_size=6)
                deadline = time.monotonic() + 60
                while ModelResponse.objects.filter(model=model).count() < 8 and time.monotonic() < deadline:
                    time.sleep(0.1)
                os.killpg(first.pid, signal.SIGKILL)  # the worker and everything it started, mid-batch
                first.wait(timeout=10)
                finished_before = set(ModelResponse.objects.filter(model=model).values_list("query_id", flat=True))
                assert 8 <= len(finished_before) < 24
                requests_before = server.requests
                second = start_worker(broker, db, folder / "second.log", extra_env=env, beat=True, name="second")
                run = wait_for_run(run.pk, timeout=120)
        finally:
            for process in (first, second):
                if process is not None and process.poll() is None:
                    stop_worker(process)
        assert run.status == "done", (run.message, (folder / "second.log").read_text()[-3000:])
        stored = ModelResponse.objects.filter(model=model)
        assert stored.count() == 24 and not stored.exclude(error="").exists()
        assert set(Counter(stored.values_list("query_id", "sample_index")).values()) == {1}
        # Nothing finished before the kill was asked for again: the prompts of finished queries were each
        # sent once; only the (at most max_concurrency) requests in flight at the kill were sent twice.
        prompts = Counter(body["messages"][0]["content"] for body in server.bodies)
        texts = dict(Query.objects.filter(dataset=dataset).values_list("id", "text"))
        for query_id in finished_before:
            assert sum(n for prompt, n in prompts.items() if texts[query_id] in prompt) == 1
        assert server.requests - requests_before <= 24 - len(finished_before)
        assert server.requests <= 24 + 2
        assert "handed out again" in "".join(run.batches.values_list("message", flat=True)) or \
            run.batches.filter(attempts__gt=1).exists()


def test_a_dead_server_trips_its_circuit_and_does_not_stall_the_other_models(settings) -> None:  # type: ignore[no-untyped-def]
    from evaluation.runs.lanes import client_for_model, evaluation_lane_run
    from evaluation.runs.services import evaluation_run_create

    settings.EVAL_MAX_DEFERRALS = 0  # record the failures at once instead of waiting for the circuit to close
    dataset = gsm8k_dataset(12, name="breaker")
    with fault_server(default=status(500)) as dead, fault_server(content=lambda body: "\\boxed{1}") as alive:
        broken = LanguageModel.objects.create(name="broken", base_url=dead.base_url, max_concurrency=2)
        healthy = LanguageModel.objects.create(name="healthy", base_url=alive.base_url, max_concurrency=2)
        run = evaluation_run_create(dataset=dataset, models=[broken, healthy], queue=False)
        for model in (broken, healthy):
            evaluation_lane_run(run_id=run.pk, model_id=model.pk, client_factory=client_for_model)
    run.refresh_from_db()
    assert run.status == "done" and "12 failed" in run.message
    assert ModelResponse.objects.filter(model=healthy, error="").count() == 12 and alive.requests == 12
    failed = ModelResponse.objects.filter(model=broken).exclude(error="")
    assert failed.count() == 12
    # After 5 failures in a row the circuit opened: the rest failed fast without reaching the server.
    assert dead.requests <= 5 + 2 and failed.filter(error_kind="circuit_open").count() >= 12 - 3


def test_a_model_server_that_dies_mid_run_loses_nothing_and_the_run_finishes_when_it_returns(  # type: ignore[no-untyped-def]
    settings, monkeypatch
) -> None:
    import threading

    from evaluation.runs import lanes
    from evaluation.runs.lanes import client_for_model, evaluation_lane_run
    from evaluation.runs.services import evaluation_run_create

    from config.celery import app

    requeued: list[float | None] = []  # the lane asks to be run again later; this test does that itself
    monkeypatch.setattr(lanes, "_queue_lanes", lambda run_id, ids, countdown=None: requeued.append(countdown))
    monkeypatch.setitem(app.conf, "task_always_eager", False)
    settings.CIRCUIT_RESET_S = 1.0
    settings.EVAL_MAX_DEFERRALS = 10
    dataset = gsm8k_dataset(20, name="outage")
    with fault_server(delay_s=0.1, slots=2, content=lambda body: "Answer: 3") as server:
        model = LanguageModel.objects.create(name="mortal", base_url=server.base_url, max_concurrency=2)
        run = evaluation_run_create(dataset=dataset, models=[model], params={"seed": 9}, batch_size=5, queue=False)

        def outage() -> None:
            while server.requests < 6:
                time.sleep(0.01)
            server.stop()  # the server dies with requests in flight ...
            time.sleep(2.5)
            server.start()  # ... and comes back on the same port

        threading.Thread(target=outage, daemon=True).start()
        outcomes = [evaluation_lane_run(run_id=run.pk, model_id=model.pk, client_factory=client_for_model)]
        deadline = time.monotonic() + 60
        while outcomes[-1] == "deferred" and time.monotonic() < deadline:
            time.sleep(0.5)  # what the re-queued lane task does after its countdown
            outcomes.append(evaluation_lane_run(run_id=run.pk, model_id=model.pk, client_factory=client_for_model))
    run.refresh_from_db()
    assert "deferred" in outcomes and run.status == "done", (outcomes, run.message)
    assert requeued and all(countdown is not None and countdown >= 1.0 for countdown in requeued)
    stored = ModelResponse.objects.filter(model=model)
    assert stored.count() == 20 and not stored.exclude(error="").exists()
    assert set(Counter(stored.values_list("query_id", "sample_index")).values()) == {1}


HOSTILE_PROGRAMS = {
    "fork-bomb": "import os\nwhile True:\n    os.fork()\n",
    "memory-hog": "blocks = []\nwhile True:\n    blocks.append(bytearray(50_000_000))\n",
    "endless-loop": "while True:\n    pass\n",
    "phones-home": "import socket\nsocket.create_connection(('127.0.0.1', 5432), timeout=1)\n",
    "reads-secrets": "import os\nassert 'SECRET_KEY' in os.environ or 'DATABASE_URL' in os.environ\n",
    "exits-before-its-tests": "import sys\nsys.exit(0)\n",  # add() is right, but its tests never ran
    "honest": "",  # the control: the same function without mischief passes
}


def test_hostile_code_from_a_model_is_graded_wrong_in_the_worker_and_the_worker_survives(  # type: ignore[no-untyped-def]
    celery_worker_process
) -> None:
    from evaluation.runs.services import evaluation_run_create

    dataset = Dataset.objects.create(name="hostile-code", split_seed=1)
    for name in HOSTILE_PROGRAMS:
        Query.objects.create(dataset=dataset, external_id=name, text=f"Write add(a, b). [{name}]", text_hash=name,
                             gold="assert add(1, 2) == 3", task_type="code", split="train", split_source="file",
                             metadata={"entry_point": "add"})

    def reply(body: dict) -> str:  # type: ignore[type-arg]
        name = body["messages"][0]["content"].split("[", 1)[1].split("]", 1)[0]
        return f"```python\ndef add(a, b):\n    return a + b\n{HOSTILE_PROGRAMS[name]}```"

    with fault_server(content=reply) as server:
        model = LanguageModel.objects.create(name="villain", base_url=server.base_url, max_concurrency=2)
        run = evaluation_run_create(dataset=dataset, models=[model])
        run = wait_for_run(run.pk, timeout=180)
    assert run.status == "done", run.message
    graded = {r.query.external_id: r for r in ModelResponse.objects.filter(model=model).select_related("query")}
    assert set(graded) == set(HOSTILE_PROGRAMS)
    assert graded.pop("honest").correct is True
    for name, response in graded.items():
        assert response.correct is False and response.score == 0.0, (name, response.grade_reason)
        assert response.grade_reason, name
    assert celery_worker_process.poll() is None  # the worker that graded them is still alive
