"""The evaluation engine's bookkeeping on real PostgreSQL, with a fake client (the real servers are in integration/)."""
from __future__ import annotations

from datetime import timedelta
from functools import partial

import pytest
from django.utils import timezone

from avengers_web.service_errors import ServiceError
from evaluation.runs import lanes, services, sweep
from evaluation.core.generation import CircuitOpenError, GenerationError
from evaluation.models import Dataset, EvaluationBatch, EvaluationRun, LanguageModel, ModelResponse, Query
from evaluation.selectors import run_progress
from tests.support.fakes import FakeLLMClient
from tests.support.math_queries import make_math_dataset, make_unserved_model, right_for_even

pytestmark = pytest.mark.django_db

make_model = partial(make_unserved_model, max_concurrency=3)  # make_model(name="m1", **fields)


def run_inline(run: EvaluationRun, client: FakeLLMClient) -> None:
    for run_model in run.run_models.all():
        lanes.evaluation_lane_run(run_id=run.pk, model_id=run_model.model_id, client_factory=lambda model: client)


def test_a_run_generates_grades_and_stores_every_sample_exactly_once() -> None:
    dataset = make_math_dataset(6)
    models = [make_model("m1"), make_model("m2")]
    client = FakeLLMClient(reply=right_for_even)
    run = services.evaluation_run_create(dataset=dataset, models=models, samples=3, params={"temperature": 0.7},
                                       batch_size=4, queue=False)
    assert run.batches.count() == 4  # 6 queries in batches of 4, per model
    run_inline(run, client)
    run.refresh_from_db()
    assert run.status == "done" and run.finished_at is not None
    assert ModelResponse.objects.count() == 6 * 3 * 2
    # Unseeded samples of one query are asked for in one request with n = 3.
    assert client.calls == 6 * 2 and {r.n for r in client.requests} == {3}
    progress = run_progress(run)
    assert (progress.total, progress.done, progress.failed, progress.remaining) == (36, 36, 0, 0)
    for model in progress.models:
        assert (model.graded, model.correct) == (18, 9) and model.mean_score == pytest.approx(0.5)
    sample = ModelResponse.objects.filter(query__external_id="q2", model=models[0]).first()
    assert sample is not None and sample.correct and sample.extracted == "4" and sample.run_id == run.pk
    assert "What is 2 + 2?" in sample.prompt and "\\boxed" in sample.prompt  # the maths template was rendered
    assert sample.params["temperature"] == 0.7 and sample.prompt_tokens == 10 and sample.latency_ms == 1.0

    # A duplicated or retried lane finds nothing to do and writes nothing, even with its batches handed out again.
    assert lanes.evaluation_lane_run(run_id=run.pk, model_id=models[0].pk,
                                      client_factory=lambda model: client) == "not running"
    EvaluationBatch.objects.filter(run=run).update(status="pending")
    EvaluationRun.objects.filter(pk=run.pk).update(status="running")
    run_inline(run, client)
    assert client.calls == 12 and ModelResponse.objects.count() == 36


def test_resume_redoes_only_the_failed_and_missing_samples() -> None:
    dataset = make_math_dataset(4)
    model = make_model()
    # A client error (say, a prompt too long for the model) is a verdict: it is recorded at once.
    broken = FakeLLMClient(fail=lambda request: GenerationError("client_error", "HTTP 400: prompt too long")
                           if "3 + 3" in request.messages[0]["content"] else None)
    run = services.evaluation_run_create(dataset=dataset, models=[model], samples=2, queue=False)
    run_inline(run, broken)
    run.refresh_from_db()
    progress = run_progress(run)
    assert (run.status, progress.done, progress.failed) == ("done", 6, 2)
    assert "2 failed: resume to retry" in run.message
    failed = ModelResponse.objects.exclude(error="")
    assert failed.count() == 2 and set(failed.values_list("error_kind", flat=True)) == {"client_error"}

    healthy = FakeLLMClient()
    run = services.evaluation_run_resume(run=run, queue=False)
    assert run.status == "running" and run.batches.count() == 1
    run_inline(run, healthy)
    run.refresh_from_db()
    assert run.status == "done" and healthy.calls == 1  # only the failed query, both samples in one request
    assert ModelResponse.objects.count() == 8 and not ModelResponse.objects.exclude(error="").exists()
    assert services.evaluation_run_resume(run=run, queue=False).message == "nothing left to do"


def test_more_samples_later_reuse_the_finished_ones() -> None:
    dataset = make_math_dataset(3)
    model = make_model()
    client = FakeLLMClient()
    run_inline(services.evaluation_run_create(dataset=dataset, models=[model], samples=2, queue=False), client)
    run = services.evaluation_run_create(dataset=dataset, models=[model], samples=5, queue=False)
    assert run_progress(run).done == 6
    run_inline(run, client)
    assert ModelResponse.objects.count() == 15 and sorted({r.n for r in client.requests}) == [2, 3]


def test_seeded_samples_are_answered_from_the_cache_unless_bypassed() -> None:
    dataset = make_math_dataset(2)
    first = make_model("first", served_model_id="same-weights")
    twin = make_model("twin", served_model_id="same-weights")  # same endpoint and served model
    client = FakeLLMClient()
    run_inline(services.evaluation_run_create(dataset=dataset, models=[first], samples=3, params={"seed": 7},
                                            queue=False), client)
    assert client.calls == 6 and sorted({r.seed for r in client.requests}) == [7, 8, 9]
    run_inline(services.evaluation_run_create(dataset=dataset, models=[twin], samples=3, params={"seed": 7},
                                            queue=False), client)
    assert client.calls == 6  # every request of the twin came from the cache
    cached = ModelResponse.objects.filter(model=twin)
    assert cached.count() == 6 and all(r.cached and r.correct is not None for r in cached)
    third = make_model("third", served_model_id="same-weights")
    run_inline(services.evaluation_run_create(dataset=dataset, models=[third], samples=3, params={"seed": 7},
                                            use_cache=False, queue=False), client)
    assert client.calls == 12 and not ModelResponse.objects.filter(model=third, cached=True).exists()


@pytest.mark.parametrize("error", [
    CircuitOpenError("circuit open for http://127.0.0.1:9/v1", retry_in_s=30),
    GenerationError("connect", "could not connect to http://127.0.0.1:9/v1: connection refused"),
], ids=["circuit-open", "server-down"])
def test_an_unavailable_server_defers_the_batch_then_records_failures(settings, monkeypatch, error) -> None:  # type: ignore[no-untyped-def]
    settings.EVAL_MAX_DEFERRALS = 1
    queued: list[tuple[int, list[int], float | None]] = []
    monkeypatch.setattr(lanes, "_queue_lanes", lambda run_id, ids, countdown=None: queued.append((run_id, ids, countdown)))
    dataset = make_math_dataset(2)
    model = make_model()
    settings.CIRCUIT_RESET_S = 30
    dead = FakeLLMClient(fail=lambda request: error)
    run = services.evaluation_run_create(dataset=dataset, models=[model], queue=False)
    outcome = lanes.evaluation_lane_run(run_id=run.pk, model_id=model.pk, client_factory=lambda m: dead)
    batch = run.batches.get()
    assert outcome == "deferred" and batch.status == "pending" and batch.not_before > timezone.now()
    assert "unavailable" in batch.message and not ModelResponse.objects.exists()
    EvaluationBatch.objects.filter(pk=batch.pk).update(not_before=None)
    lanes.evaluation_lane_run(run_id=run.pk, model_id=model.pk, client_factory=lambda m: dead)
    assert ModelResponse.objects.filter(error_kind=error.kind).count() == 2
    run.refresh_from_db()
    assert run.status == "done"


@pytest.mark.django_db(transaction=True)
def test_cancel_stops_a_run_and_resume_does_only_the_rest(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from django.db import connection

    monkeypatch.setattr(lanes._Lane, "STATUS_EVERY_S", 0.0)  # notice the cancel at once

    dataset = make_math_dataset(12)
    model = make_model()
    run = services.evaluation_run_create(dataset=dataset, models=[model], batch_size=2, queue=False)

    def cancel_on_the_third_call(request):  # type: ignore[no-untyped-def]
        if len(client.requests) == 3:
            # What the API does, from another connection while the lane works.
            EvaluationRun.objects.filter(pk=run.pk).update(status="cancelled")
            connection.close()
        return None

    client = FakeLLMClient(fail=cancel_on_the_third_call)
    assert lanes.evaluation_lane_run(run_id=run.pk, model_id=model.pk, client_factory=lambda m: client) == "cancelled"
    run.refresh_from_db()
    stored = ModelResponse.objects.count()
    assert run.status == "cancelled" and 3 <= stored < 12 and stored == client.calls
    assert not run.batches.filter(status="running").exists()
    with pytest.raises(ServiceError, match="only a running run"):
        services.evaluation_run_cancel(run=run)
    run = services.evaluation_run_resume(run=run, queue=False)
    finisher = FakeLLMClient()
    run_inline(run, finisher)
    run.refresh_from_db()
    assert run.status == "done" and ModelResponse.objects.count() == 12
    assert finisher.calls == 12 - stored  # nothing finished before the cancel was asked for again


def test_the_sweeper_hands_a_dead_workers_batch_to_a_live_one(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    queued: list[tuple[int, list[int]]] = []
    monkeypatch.setattr(sweep, "_queue_lanes", lambda run_id, ids, countdown=None: queued.append((run_id, ids)))
    dataset = make_math_dataset(2)
    model = make_model()
    run = services.evaluation_run_create(dataset=dataset, models=[model], queue=False)
    EvaluationBatch.objects.filter(run=run).update(status="running", heartbeat_at=timezone.now() - timedelta(minutes=1))
    assert sweep.evaluation_sweep(stale_after_s=300) == {"reclaimed": 0, "lanes_queued": 0, "runs_finished": 0}
    assert sweep.evaluation_sweep(stale_after_s=30) == {"reclaimed": 1, "lanes_queued": 1, "runs_finished": 0}
    assert queued == [(run.pk, [model.pk])] and run.batches.get().status == "pending"


@pytest.mark.parametrize(("change", "field", "message"), [
    ({"samples": 0}, "samples", "between 1 and 100"),
    ({"split": "dev"}, "split", "must be one of"),
    ({"params": {"temperature": 9}}, "params", "temperature: 9 is outside"),
    ({"params": {"presence_penalty": 1}}, "params", "not a run parameter"),
    ({"split": "test"}, "split", "has no test queries"),
    ({"models": []}, "models", "at least one model"),
])
def test_a_bad_run_request_is_refused_and_creates_nothing(change, field, message) -> None:  # type: ignore[no-untyped-def]
    arguments = {"dataset": make_math_dataset(2), "models": [make_model()], "queue": False, **change}
    with pytest.raises(ServiceError) as caught:
        services.evaluation_run_create(**arguments)
    assert caught.value.field == field and message in caught.value.message
    assert not EvaluationRun.objects.exists() and not EvaluationBatch.objects.exists()


def test_an_offline_or_inactive_model_cannot_be_evaluated() -> None:
    dataset = make_math_dataset(1)
    offline = LanguageModel.objects.create(name="imported-only")
    with pytest.raises(ServiceError, match="offline model"):
        services.evaluation_run_create(dataset=dataset, models=[offline], queue=False)
    inactive = make_model("sleeping", is_active=False)
    with pytest.raises(ServiceError, match="inactive"):
        services.evaluation_run_create(dataset=dataset, models=[inactive], queue=False)


def test_templates_come_from_the_model_then_the_dataset_then_the_defaults() -> None:
    dataset = make_math_dataset(1)
    dataset.prompt_templates = {"math": "DATASET {query}"}
    dataset.save()
    plain = make_model("plain")
    custom = make_model("custom", prompt_templates={"math": "MODEL {query} \\boxed{}"})
    client = FakeLLMClient()
    run_inline(services.evaluation_run_create(dataset=dataset, models=[plain, custom], queue=False), client)
    prompts = dict(ModelResponse.objects.values_list("model__name", "prompt"))
    assert prompts == {"plain": "DATASET What is 0 + 0?", "custom": "MODEL What is 0 + 0? \\boxed{}"}


def test_resume_waits_while_a_live_worker_finishes_a_cancelled_batch() -> None:
    dataset = make_math_dataset(2)
    model = make_model()
    run = services.evaluation_run_create(dataset=dataset, models=[model], queue=False)
    services.evaluation_run_cancel(run=run)
    EvaluationBatch.objects.filter(run=run).update(status="running", heartbeat_at=timezone.now())
    with pytest.raises(ServiceError, match="still finishing the requests"):
        services.evaluation_run_resume(run=run, queue=False)
    # A batch whose worker went silent is dead: resuming redoes its work.
    EvaluationBatch.objects.filter(run=run).update(heartbeat_at=timezone.now() - timedelta(hours=1))
    run = services.evaluation_run_resume(run=run, queue=False)
    assert run.status == "running" and list(run.batches.values_list("status", flat=True)) == ["pending"]


def test_code_the_sandbox_refuses_to_run_is_a_failed_sample_that_a_resume_grades(  # type: ignore[no-untyped-def]
        settings, monkeypatch) -> None:
    from evaluation.core import sandbox

    dataset = Dataset.objects.create(name="code", split_seed=1)
    Query.objects.create(dataset=dataset, external_id="c0", text="Write add(a, b).", text_hash="c0",
                         gold="assert add(2, 3) == 5", task_type="code", split="train", split_source="file")
    model = make_model()
    client = FakeLLMClient(reply=lambda request, i: "```python\ndef add(a, b):\n    return a + b\n```")
    seen: list[bool] = []
    real_run_python = sandbox.run_python

    def refusing(source: str, **options: object) -> sandbox.SandboxResult:  # a machine without confinement
        seen.append(bool(options["allow_weak"]))
        return sandbox.SandboxResult("refused", False, None, "", "", 0.0, sandbox.REFUSAL)

    monkeypatch.setattr(sandbox, "run_python", refusing)
    settings.SANDBOX_ALLOW_WEAK = True  # passed to the sandbox, which decides
    run = services.evaluation_run_create(dataset=dataset, models=[model], samples=1, queue=False)
    run_inline(run, client)
    run.refresh_from_db()
    sample = ModelResponse.objects.get()
    assert seen == [True]
    assert (sample.score, sample.correct, sample.error_kind) == (None, None, "grading")
    assert sample.error == f"not graded: {sandbox.REFUSAL}" and sample.text  # the answer is kept
    assert "1 failed: resume to retry" in run.message

    monkeypatch.setattr(sandbox, "run_python", real_run_python)  # bubblewrap installed, say
    run = services.evaluation_run_resume(run=run, queue=False)
    run_inline(run, client)
    sample = ModelResponse.objects.get()
    assert (sample.error, sample.correct, sample.score) == ("", True, 1.0)
