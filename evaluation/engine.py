"""Services for evaluation runs: create, cancel, resume, and the worker side that generates and grades.

How a run moves:

1. ``evaluation_run_create`` validates the request, snapshots each model's parameters and templates,
   cuts the queries into batches per model and, once the transaction commits, queues one *lane* task
   per model.
2. A lane (``evaluation_lane_run``) holds a PostgreSQL advisory lock on its model, so all workers
   together never exceed the endpoint's ``max_concurrency``; it claims the model's pending batches
   (``SELECT ... FOR UPDATE SKIP LOCKED``), the next one before the last one drains.
3. For each batch it skips every sample already stored, answers seeded requests from the cache,
   asks the server for the rest from a pool of ``max_concurrency`` threads, grades each answer in
   that thread, and writes each response as soon as it arrives, so a worker or server that dies
   loses no finished work. The write is an upsert on (model, query, sample, params_key) that only
   replaces a failed row: a duplicate task writes nothing twice.
4. A batch whose requests still fail after the client's retries (the server is down, its circuit open)
   waits and is tried again, ``EVAL_MAX_DEFERRALS`` times, before its failures are recorded.
   The batch heartbeats while it works. ``evaluation_sweep`` (periodic) hands batches whose heartbeat
   stopped back to pending and queues lanes for them.
5. When no batch is pending or running, the run is done. ``evaluation_run_resume`` re-creates batches
   for what is missing or failed, and nothing else.
"""
from __future__ import annotations

import concurrent.futures as futures
import json
import logging
import os
import socket
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from functools import partial
from queue import Empty, SimpleQueue
from typing import Any

from django.conf import settings
from django.db import connection, transaction
from django.db.models import Count, F, Q, QuerySet
from django.urls import reverse
from django.utils import timezone

from avengers_web.service_errors import ServiceError
from avengers_web.services import User, activity_record, owner_of
from evaluation import metrics, providers
from evaluation.core import grading
from evaluation.core.generation import (
    ChatRequest,
    CircuitOpenError,
    Completion,
    GenerationError,
    LLMClient,
    RetryPolicy,
)
from evaluation.core.prompts import cache_key, params_key, render, resolve_template
from evaluation.core.sampling import validate_sampling_params
from evaluation.selectors import run_model_responses, run_progress, run_queries, run_query_ids
from evaluation.models import (
    Dataset,
    EvaluationBatch,
    EvaluationRun,
    EvaluationRunModel,
    GenerationCache,
    LanguageModel,
    ModelResponse,
    Query,
)
from evaluation.tasks import evaluation_lane as evaluation_lane_task

logger = logging.getLogger(__name__)
ClientFactory = Callable[[LanguageModel], LLMClient]
MAX_SAMPLES = 100
REQUEST_PARAMS = ("temperature", "top_p", "max_tokens", "seed", "stop")
MAX_BATCH_SIZE = 1000
DEFAULT_BATCH_SIZE = 100
# Keys of a query's metadata that graders take as options.
GRADER_OPTIONS = grading.QUERY_OPTIONS
_LOCK_NAMESPACE = 0x4156  # "AV": advisory locks of model lanes live in their own namespace


# ---------------------------------------------------------------------------------------------- create


def _effective_params(model: LanguageModel, run_params: dict[str, Any]) -> dict[str, Any]:
    """Return the model's defaults overridden by the run's, keeping the parameters a request carries."""
    merged = {**(model.default_params or {}), **run_params}
    return {key: merged[key] for key in REQUEST_PARAMS if key in merged}


def evaluation_run_create(
    *,
    dataset: Dataset,
    models: Sequence[LanguageModel],
    split: str = "train",
    samples: int = 1,
    params: dict[str, Any] | None = None,
    use_cache: bool = True,
    limit: int | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    user: User = None,
    queue: bool = True,
) -> EvaluationRun:
    """Create a run and queue its lanes (unless ``queue`` is off); on bad input raise ServiceError, create nothing."""
    if split not in EvaluationRun.Split.values:
        raise ServiceError("split", f"must be one of {', '.join(EvaluationRun.Split.values)}")
    if not 1 <= samples <= MAX_SAMPLES:
        raise ServiceError("samples", f"must be between 1 and {MAX_SAMPLES}")
    if not 1 <= batch_size <= MAX_BATCH_SIZE:
        raise ServiceError("batch_size", f"must be between 1 and {MAX_BATCH_SIZE}")
    if limit is not None and limit < 1:
        raise ServiceError("limit", "must be at least 1")
    try:
        run_params = validate_sampling_params(params or {})
    except ValueError as exc:
        raise ServiceError("params", str(exc)) from None
    unsupported = sorted(set(params or {}) - set(REQUEST_PARAMS))
    if unsupported:
        raise ServiceError("params", f"{unsupported[0]}: not a run parameter; use {', '.join(REQUEST_PARAMS)} "
                                     "(and `samples` for the number of samples)")
    if not models:
        raise ServiceError("models", "choose at least one model")
    for model in models:
        if model.is_offline:
            raise ServiceError("models",
                               f"{model.name} is an offline model (no endpoint URL); give it a base URL first")
        if not model.is_active:
            raise ServiceError("models", f"{model.name} is inactive; activate it first")
    query_ids = list(run_queries(dataset, split).order_by("id").values_list("id", flat=True)[:limit])
    if not query_ids:
        raise ServiceError("split", f"dataset {dataset.name} has no {split} queries")
    task_types = sorted(set(Query.objects.filter(id__in=query_ids).values_list("task_type", flat=True)))
    owner = owner_of(user)
    with transaction.atomic():
        run = EvaluationRun.objects.create(
            dataset=dataset, split=split, samples=samples, params=run_params, use_cache=use_cache, limit=limit,
            batch_size=batch_size, n_queries=len(query_ids), max_query_id=query_ids[-1], created_by=owner,
            status=EvaluationRun.Status.RUNNING, started_at=timezone.now(),
        )
        for model in models:
            effective = _effective_params(model, run_params)
            templates = {t: resolve_template(t, model.prompt_templates, dataset.prompt_templates) for t in task_types}
            EvaluationRunModel.objects.create(
                run=run, model=model, params=effective, templates=templates,
                params_keys={t: params_key(effective, template) for t, template in templates.items()},
            )
        _create_batches(run, [(m.pk, query_ids) for m in models])
        run.completed_at_start = sum(p.done + p.failed for p in run_progress(run).models)
        run.save(update_fields=["completed_at_start"])
        if queue:
            transaction.on_commit(partial(_queue_lanes, run.pk, [m.pk for m in models]))
    names = ", ".join(m.name for m in models)
    activity_record(actor=user, verb="started an evaluation", target=f"{names} on {dataset.name} ({split})",
                    url=reverse("evaluation-detail", args=[run.pk]))
    return run


def _create_batches(run: EvaluationRun, work: Iterable[tuple[int, Sequence[int]]]) -> int:
    rows = [
        EvaluationBatch(run=run, model_id=model_id, query_ids=list(query_ids[i:i + run.batch_size]))
        for model_id, query_ids in work
        for i in range(0, len(query_ids), run.batch_size)
    ]
    EvaluationBatch.objects.bulk_create(rows)
    return len(rows)


def _queue_lanes(run_id: int, model_ids: Iterable[int], countdown: float | None = None) -> None:
    for model_id in model_ids:
        try:
            evaluation_lane_task.apply_async((run_id, model_id), countdown=countdown)
        except Exception:
            # The run's batches are safe in the database: the sweeper queues their lane once the broker is back.
            logger.exception("could not queue the lane of model %s in run %s; the sweeper will", model_id, run_id)


# ---------------------------------------------------------------------------------------------- control


def evaluation_run_cancel(*, run: EvaluationRun, user: User = None) -> EvaluationRun:
    """Stop a run: lanes finish the requests in flight, save them, and stop; nothing is lost."""
    updated = EvaluationRun.objects.filter(
        pk=run.pk, status__in=[EvaluationRun.Status.PENDING, EvaluationRun.Status.RUNNING]
    ).update(status=EvaluationRun.Status.CANCELLED, finished_at=timezone.now(), message="cancelled")
    if not updated:
        raise ServiceError("status", f"run {run.pk} is {run.status}; only a running run can be cancelled")
    activity_record(actor=user, verb="cancelled evaluation", target=f"run {run.pk}",
                    url=reverse("evaluation-detail", args=[run.pk]))
    run.refresh_from_db()
    return run


def evaluation_run_resume(*, run: EvaluationRun, user: User = None, queue: bool = True) -> EvaluationRun:
    """Queue again only the samples that are missing or failed; finished work is never redone."""
    with transaction.atomic():
        run = EvaluationRun.objects.select_for_update().get(pk=run.pk)
        if run.status == EvaluationRun.Status.RUNNING and run.batches.filter(
            status__in=[EvaluationBatch.Status.PENDING, EvaluationBatch.Status.RUNNING]
        ).exists():
            raise ServiceError("status", f"run {run.pk} is still running; cancel it first or wait")
        live = run.batches.filter(status=EvaluationBatch.Status.RUNNING,
                                  heartbeat_at__gte=timezone.now() - timedelta(seconds=settings.EVAL_STALE_AFTER_S))
        if live.exists():
            # Their requests in flight would be counted as missing and asked for twice.
            raise ServiceError("status", f"run {run.pk} was cancelled, but a worker is still finishing the requests "
                                         "it had sent; resume in a few seconds")
        # Batches still marked running here belong to a worker that died: their work is redone below.
        run.batches.all().delete()
        progress = run_progress(run)
        work = []
        for run_model in run.run_models.all():
            incomplete = _incomplete_query_ids(run, run_model)
            if incomplete:
                work.append((run_model.model_id, incomplete))
        _create_batches(run, work)
        run.status = EvaluationRun.Status.RUNNING if work else EvaluationRun.Status.DONE
        run.started_at = timezone.now()
        run.finished_at = None if work else timezone.now()
        run.completed_at_start = sum(p.done + p.failed for p in progress.models)
        run.message = "" if work else "nothing left to do"
        run.save(update_fields=["status", "started_at", "finished_at", "completed_at_start", "message"])
        if queue:
            transaction.on_commit(partial(_queue_lanes, run.pk, [m for m, _ in work]))
    activity_record(actor=user, verb="resumed evaluation", target=f"run {run.pk}",
                    url=reverse("evaluation-detail", args=[run.pk]))
    return run


def _incomplete_query_ids(run: EvaluationRun, run_model: EvaluationRunModel) -> list[int]:
    done = dict(
        run_model_responses(run, run_model).filter(error="").values_list("query_id").annotate(n=Count("id")).order_by()
    )
    return [q for q in run_query_ids(run) if done.get(q, 0) < run.samples]


# ---------------------------------------------------------------------------------------------- worker side


def client_for_model(model: LanguageModel) -> LLMClient:
    """Return this process's shared client of the model's endpoint (its slots and circuit are shared)."""
    client = providers.client_for(base_url=model.base_url, api_key=model.api_key,
                                  max_concurrency=model.max_concurrency, timeout_s=settings.GENERATION_TIMEOUT_S)
    if client.retry.max_attempts != settings.GENERATION_MAX_ATTEMPTS:
        client.retry = RetryPolicy(max_attempts=settings.GENERATION_MAX_ATTEMPTS)
    client.breaker.reset_after_s = settings.CIRCUIT_RESET_S
    return client


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def _try_lock_model(model_id: int) -> bool:
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_try_advisory_lock(%s, %s)", [_LOCK_NAMESPACE, model_id])
        return bool(cursor.fetchone()[0])


def _unlock_model(model_id: int) -> None:
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_advisory_unlock(%s, %s)", [_LOCK_NAMESPACE, model_id])


def evaluation_lane_run(*, run_id: int, model_id: int, client_factory: ClientFactory) -> str:
    """Execute the model's pending batches of the run; return why it stopped.

    Only one lane per model runs at a time across all workers (an advisory lock), so the endpoint
    never gets more than its ``max_concurrency`` requests from this platform. A lane that finds the
    lock taken returns at once: the lane holding it takes this run's batches too, or the sweeper
    queues another one later.
    """
    if not _try_lock_model(model_id):
        return "busy"
    try:
        run_model = EvaluationRunModel.objects.select_related("model", "run").filter(
            run_id=run_id, model_id=model_id).first()
        if run_model is None:
            return "gone"
        client = client_factory(run_model.model)
        outcome = _Lane(run_model, client).execute()
        while outcome == "no batch" and _pending_batches(run_id, model_id).exists():
            # A batch whose wait ended after the lane last looked: take it now, or say it still waits.
            if _waiting_batches(run_id, model_id).exists() and not _claimable_batches(run_id, model_id).exists():
                outcome = "deferred"
            else:
                outcome = _Lane(run_model, client).execute()
        if outcome == "deferred":
            # Come back when the circuit may have closed instead of spinning. Eager mode (no broker) would
            # run the lane again at once, inside this one: there the caller or the sweeper comes back.
            if not evaluation_lane_task.app.conf.task_always_eager:
                transaction.on_commit(partial(_queue_lanes, run_id, [model_id], _deferral_wait_s(run_id, model_id)))
        elif outcome == "no batch":
            return _finish_run_if_complete(run_id) or outcome
        return outcome
    finally:
        _unlock_model(model_id)


def _pending_batches(run_id: int, model_id: int) -> QuerySet[EvaluationBatch]:
    return EvaluationBatch.objects.filter(run_id=run_id, model_id=model_id, status=EvaluationBatch.Status.PENDING)


def _waiting_batches(run_id: int, model_id: int) -> QuerySet[EvaluationBatch]:
    return _pending_batches(run_id, model_id).filter(not_before__gt=timezone.now())


def _claimable_batches(run_id: int, model_id: int) -> QuerySet[EvaluationBatch]:
    return _pending_batches(run_id, model_id).filter(Q(not_before__isnull=True) | Q(not_before__lte=timezone.now()))


def _deferral_wait_s(run_id: int, model_id: int) -> float:
    first = _waiting_batches(run_id, model_id).order_by("not_before").first()
    if first is None or first.not_before is None:
        return 1.0
    return max((first.not_before - timezone.now()).total_seconds(), 1.0)


class _Lane:
    """Keep the endpoint's slots busy across batch boundaries, claiming the next batch before this one drains.

    Requests go to a pool of ``max_concurrency`` threads. Whenever fewer than ``2 x max_concurrency``
    requests are queued or in flight, the next batch is claimed and its requests are submitted, so
    the server never idles while a batch's last requests finish. Each response is written by this
    thread as soon as it arrives; a batch is marked done when its last request has been written.
    """

    # The run's status is asked at most this often: at hundreds of requests a second, asking at every
    # wake-up would cost more than the work. A cancel is noticed within this long.
    STATUS_EVERY_S = 1.0

    def __init__(self, run_model: EvaluationRunModel, client: LLMClient) -> None:
        self.run_model = run_model
        self.client = client
        self.run = run_model.run
        self.slots = max(1, run_model.model.max_concurrency)
        self.open: dict[int, EvaluationBatch] = {}  # claimed batches with requests not yet written
        self.left: dict[int, int] = {}  # batch id -> requests not yet written
        self.deferred: dict[int, float] = {}  # batch id -> seconds until its circuit may close
        self.futures: dict[futures.Future[_Outcome], int] = {}  # request -> its batch id
        self.cancelled = False
        self.exhausted = False  # no batch left to claim, or claiming stopped
        self._status: str | None = None
        self._status_at = 0.0
        self._done: SimpleQueue[futures.Future[_Outcome]] = SimpleQueue()

    def execute(self) -> str:
        pool = futures.ThreadPoolExecutor(max_workers=self.slots,
                                          thread_name_prefix=f"eval-{self.run_model.model_id}")
        last_beat = time.monotonic()
        try:
            self._top_up(pool)
            while self.futures:
                done = self._next_done(timeout=min(settings.EVAL_HEARTBEAT_S, max(self.STATUS_EVERY_S, 0.05)))
                finished = [(self.futures.pop(future), future) for future in done if future in self.futures]
                # Everything that arrived since the last wake-up goes to the database in one statement,
                # before any batch is marked done.
                _write(self.run, self.run_model, [
                    (future.result(), None) for batch_id, future in finished
                    if not future.cancelled() and not self._deferred(batch_id, future.result())
                ])
                for batch_id, _future in finished:
                    self._request_finished(batch_id)
                if time.monotonic() - last_beat >= settings.EVAL_HEARTBEAT_S:
                    last_beat = time.monotonic()
                    EvaluationBatch.objects.filter(pk__in=list(self.open)).update(heartbeat_at=timezone.now())
                self._stopped()
                self._top_up(pool)
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
        if self.cancelled:
            return "cancelled"
        if self.deferred:
            return "deferred"
        return "no batch" if self._run_status() == EvaluationRun.Status.RUNNING else "not running"

    def _next_done(self, *, timeout: float) -> list[futures.Future[_Outcome]]:
        """Wait for a request to finish, then take every other one that has finished too."""
        # A queue fed by done-callbacks costs the same at any number of requests in flight; futures.wait
        # would register a waiter on every one of them at every wake-up.
        try:
            done = [self._done.get(timeout=timeout)]
        except Empty:
            return []
        while True:
            try:
                done.append(self._done.get_nowait())
            except Empty:
                return done

    def _run_status(self) -> str | None:
        now = time.monotonic()
        if self._status is None or now - self._status_at >= self.STATUS_EVERY_S:
            self._status = EvaluationRun.objects.filter(pk=self.run.pk).values_list("status", flat=True).first()
            self._status_at = now
        return self._status

    def _top_up(self, pool: futures.ThreadPoolExecutor) -> None:
        """Claim batches and submit their requests until enough work is queued for every slot."""
        while not self.exhausted and not self.cancelled and len(self.futures) < 2 * self.slots:
            if self._stopped():
                return
            batch = _claim_next_batch(self.run.pk, self.run_model.model_id)
            if batch is None:
                self.exhausted = True
                return
            jobs = self._cached_first(batch, _plan_jobs(batch, self.run, self.run_model))
            self.open[batch.pk] = batch
            self.left[batch.pk] = len(jobs) + 1  # +1 until every job is submitted, so it cannot finish early
            for job in jobs:
                future = pool.submit(_call, self.client, job)
                self.futures[future] = batch.pk
                future.add_done_callback(self._done.put)
            self._request_finished(batch.pk)

    def _cached_first(self, batch: EvaluationBatch, jobs: list[_Job]) -> list[_Job]:
        """Write the samples the response cache can answer; return the jobs that need the server."""
        keys = [j.cache_key for j in jobs if j.cache_key]
        if not keys:
            return jobs
        cached = {row.key: row for row in GenerationCache.objects.filter(key__in=keys)}
        if cached:
            GenerationCache.objects.filter(key__in=list(cached)).update(hits=F("hits") + 1)
        remaining, answered = [], []
        for job in jobs:
            hit = cached.get(job.cache_key or "")
            if hit is None:
                remaining.append(job)
            else:
                answered.append((_Outcome(job, None, None, (_grade(job.query, hit.text),)), hit))
        _write(self.run, self.run_model, answered)
        return remaining

    def _deferred(self, batch_id: int, outcome: _Outcome) -> bool:
        """Say whether the outcome defers its batch instead of recording a failure.

        A retryable error that outlasted the client's retries (the server is down, overloaded or its
        circuit is open) is no verdict on the sample: the batch waits and is tried again, until its
        deferrals run out; then the failure is recorded and a resume retries it.
        """
        error = outcome.error
        if error is None or not error.retryable or self.open[batch_id].attempts > settings.EVAL_MAX_DEFERRALS:
            return False
        wait = error.retry_in_s if isinstance(error, CircuitOpenError) else settings.CIRCUIT_RESET_S
        self.deferred[batch_id] = max(self.deferred.get(batch_id, 0.0), wait)
        self.exhausted = True
        return True

    def _request_finished(self, batch_id: int) -> None:
        self.left[batch_id] -= 1
        if self.left[batch_id] > 0:
            return
        del self.left[batch_id]
        self.open.pop(batch_id)
        rows = EvaluationBatch.objects.filter(pk=batch_id)
        if self.cancelled:
            rows.update(status=EvaluationBatch.Status.PENDING, message="cancelled")
        elif batch_id in self.deferred:
            not_before = timezone.now() + timedelta(seconds=max(self.deferred[batch_id], 1.0))
            rows.update(status=EvaluationBatch.Status.PENDING, not_before=not_before,
                        message=f"the endpoint is unavailable; trying again after {not_before:%H:%M:%S} UTC")
        else:
            rows.update(status=EvaluationBatch.Status.DONE, heartbeat_at=timezone.now(), message="")

    def _stopped(self) -> bool:
        """Say whether the run stopped; on a cancel, drop the requests not started (those in flight finish)."""
        status = self._run_status()
        if status == EvaluationRun.Status.RUNNING:
            return False
        self.exhausted = True
        if status == EvaluationRun.Status.CANCELLED and not self.cancelled:
            self.cancelled = True
            for future in list(self.futures):
                if future.cancel():
                    self._request_finished(self.futures.pop(future))
        return True


def _claim_next_batch(run_id: int, model_id: int) -> EvaluationBatch | None:
    now = timezone.now()
    with transaction.atomic():
        batch = _claimable_batches(run_id, model_id).select_for_update(skip_locked=True).order_by("id").first()
        if batch is None:
            return None
        batch.status = EvaluationBatch.Status.RUNNING
        batch.attempts += 1
        batch.claimed_by = worker_name()
        batch.claimed_at = batch.heartbeat_at = now
        batch.save(update_fields=["status", "attempts", "claimed_by", "claimed_at", "heartbeat_at"])
    return batch


def _finish_run_if_complete(run_id: int) -> str | None:
    open_batches = EvaluationBatch.objects.filter(
        run_id=run_id, status__in=[EvaluationBatch.Status.PENDING, EvaluationBatch.Status.RUNNING])
    if open_batches.exists():
        return None
    run = EvaluationRun.objects.get(pk=run_id)
    progress = run_progress(run)
    message = f"{progress.done} samples done" + (f", {progress.failed} failed: resume to retry them" if progress.failed else "")
    finished = EvaluationRun.objects.filter(pk=run_id, status=EvaluationRun.Status.RUNNING).update(
        status=EvaluationRun.Status.DONE, finished_at=timezone.now(), message=message)
    return "finished" if finished else None


@dataclass(frozen=True)
class _Job:
    query: Query
    prompt: str
    params_key: str
    sample_indexes: tuple[int, ...]
    request: ChatRequest
    cache_key: str | None  # set when the request is seeded and the run may use the cache


@dataclass(frozen=True)
class _Outcome:
    job: _Job
    completion: Completion | None
    error: GenerationError | None
    grades: tuple[grading.Grade | grading.GradingUnavailable | None, ...]


def _grade(query: Query, text: str) -> grading.Grade | grading.GradingUnavailable | None:
    """Grade one answer against the query's gold; None when there is nothing to grade against."""
    if not query.gold:
        return None
    options = {k: query.metadata[k] for k in GRADER_OPTIONS if k in (query.metadata or {})}
    if query.task_type == "code":
        options.setdefault("prompt", query.text)
        options["allow_weak_sandbox"] = settings.SANDBOX_ALLOW_WEAK
    try:
        return grading.grade(query.task_type or "exact", text, query.gold, **options)
    except grading.GradingUnavailable as exc:
        return exc  # recorded as the sample's error, so that a resume grades it once the machine can
    except Exception as exc:
        # Graders do not raise on any text; a raise is our bug, and it must not cost the sample its answer.
        logger.exception("grading query %s failed", query.pk)
        return grading.Grade(correct=False, score=0.0, extracted=None, reason=f"grader error: {exc}")


def _call(client: LLMClient, job: _Job) -> _Outcome:
    try:
        completion = client.complete(job.request)
    except GenerationError as exc:
        return _Outcome(job, None, exc, ())
    # Grading runs here, in the pool's thread, so that slow graders (code in the sandbox) overlap with generation.
    grades = tuple(_grade(job.query, choice.text) for choice in completion.choices)
    return _Outcome(job, completion, None, grades)


def _plan_jobs(batch: EvaluationBatch, run: EvaluationRun, run_model: EvaluationRunModel) -> list[_Job]:
    queries = list(Query.objects.filter(id__in=batch.query_ids).order_by("id"))
    keys = run_model.params_keys
    finished = set(
        ModelResponse.objects.filter(model_id=run_model.model_id, query_id__in=batch.query_ids,
                                     params_key__in=list(keys.values()), sample_index__lt=run.samples, error="")
        .values_list("query_id", "sample_index")
    )
    params = dict(run_model.params)
    seed = params.pop("seed", None)
    stop = tuple(params.pop("stop", ()) or ())
    model = run_model.model
    jobs = []
    for query in queries:
        template = run_model.templates.get(query.task_type) or resolve_template(query.task_type)
        prompt = render(template, query.text, choices=(query.metadata or {}).get("choices"))
        messages = ({"role": "user", "content": prompt},)
        missing = tuple(i for i in range(run.samples) if (query.pk, i) not in finished)
        if not missing:
            continue
        key = keys.get(query.task_type) or params_key(run_model.params, template)
        if seed is None:
            # Unseeded samples are interchangeable: ask for all of them in one request (vLLM's n).
            request = ChatRequest(model=model.model_id, messages=messages, n=len(missing), stop=stop, **params)
            jobs.append(_Job(query, prompt, key, missing, request, None))
            continue
        for index in missing:
            # Seed + sample index: samples differ from each other but each one is reproducible, hence cacheable.
            request = ChatRequest(model=model.model_id, messages=messages, n=1, seed=int(seed) + index, stop=stop, **params)
            ckey = cache_key(base_url=model.base_url, model=model.model_id, messages=messages,
                             params=request.params()) if run.use_cache else None
            jobs.append(_Job(query, prompt, key, (index,), request, ckey))
    return jobs


_UPSERT_COLUMNS = (
    "model_id", "query_id", "sample_index", "params_key", "source", "run_id", "prompt", "text", "params",
    "finish_reason", "prompt_tokens", "completion_tokens", "latency_ms", "error", "error_kind", "extracted", "score",
    "correct", "grade_reason", "cached", "attempts", "created_at", "updated_at",
)
_UNIQUE_COLUMNS = ("model_id", "query_id", "sample_index", "params_key")


def _rows(run: EvaluationRun, run_model: EvaluationRunModel, outcome: _Outcome,
          cached_row: GenerationCache | None) -> list[dict[str, Any]]:
    """Return the response rows of one request: one per sample it answered (or failed)."""
    job = outcome.job
    now = timezone.now()
    rows = []
    completion = outcome.completion
    n = len(job.sample_indexes)
    for position, index in enumerate(job.sample_indexes):
        row: dict[str, Any] = {
            "model_id": run_model.model_id, "query_id": job.query.pk, "sample_index": index,
            "params_key": job.params_key, "source": ModelResponse.Source.GENERATED, "run_id": run.pk,
            "prompt": job.prompt, "params": json.dumps(job.request.params()), "cached": cached_row is not None,
            "created_at": now, "updated_at": now, "text": "", "finish_reason": "", "prompt_tokens": None,
            "completion_tokens": None, "latency_ms": None, "error": "", "error_kind": "", "extracted": None,
            "score": None, "correct": None, "grade_reason": "", "attempts": None,
        }
        if cached_row is not None:
            row.update(text=cached_row.text, finish_reason=cached_row.finish_reason,
                       prompt_tokens=cached_row.prompt_tokens, completion_tokens=cached_row.completion_tokens,
                       latency_ms=0.0, attempts=0)
        elif completion is not None:
            choice = completion.choices[position]
            # Servers report usage per request; n samples share it evenly.
            row.update(text=choice.text, finish_reason=choice.finish_reason, prompt_tokens=completion.prompt_tokens,
                       completion_tokens=None if completion.completion_tokens is None
                       else round(completion.completion_tokens / n),
                       latency_ms=completion.latency_ms, attempts=completion.attempts)
        else:
            error = outcome.error
            row.update(error=(error.message if error else "") or "no answer",
                       error_kind=error.kind if error else "", attempts=error.attempts if error else None)
        grade = outcome.grades[position] if position < len(outcome.grades) else None
        if isinstance(grade, grading.GradingUnavailable):
            row.update(error=f"not graded: {grade}", error_kind="grading")
        elif grade is not None:
            row.update(extracted=grade.extracted, score=grade.score, correct=grade.correct, grade_reason=grade.reason)
        rows.append(row)
    return rows


def _write(run: EvaluationRun, run_model: EvaluationRunModel,
           outcomes: Sequence[tuple[_Outcome, GenerationCache | None]]) -> int:
    """Store the samples of these requests in one statement; replace only failed rows, never finished ones."""
    rows = [row for outcome, hit in outcomes for row in _rows(run, run_model, outcome, hit)]
    if not rows:
        return 0
    table = ModelResponse._meta.db_table
    placeholders = ", ".join(["(" + ", ".join(["%s"] * len(_UPSERT_COLUMNS)) + ")"] * len(rows))
    updates = ", ".join(f"{c} = EXCLUDED.{c}" for c in _UPSERT_COLUMNS if c not in _UNIQUE_COLUMNS + ("created_at",))
    sql = (f"INSERT INTO {table} ({', '.join(_UPSERT_COLUMNS)}) VALUES {placeholders} "
           f"ON CONFLICT ({', '.join(_UNIQUE_COLUMNS)}) DO UPDATE SET {updates} WHERE {table}.error <> ''")
    with connection.cursor() as cursor:
        cursor.execute(sql, [row[c] for row in rows for c in _UPSERT_COLUMNS])
        written = cursor.rowcount
    model = run_model.model
    metrics.samples_stored(model.name, rows)
    fresh = [
        GenerationCache(key=o.job.cache_key, base_url=model.base_url, served_model=model.model_id,
                        params=o.job.request.params(), text=o.completion.choices[0].text,
                        finish_reason=o.completion.choices[0].finish_reason, prompt_tokens=o.completion.prompt_tokens,
                        completion_tokens=o.completion.completion_tokens)
        for o, hit in outcomes if hit is None and o.completion is not None and o.job.cache_key
    ]
    GenerationCache.objects.bulk_create(fresh, ignore_conflicts=True)
    return written


# ---------------------------------------------------------------------------------------------- sweeper


def evaluation_sweep(*, stale_after_s: float | None = None) -> dict[str, int]:
    """Hand batches of dead workers back to pending and queue lanes for every running run with pending work."""
    stale_after = timedelta(seconds=stale_after_s if stale_after_s is not None else settings.EVAL_STALE_AFTER_S)
    now = timezone.now()
    reclaimed = EvaluationBatch.objects.filter(
        status=EvaluationBatch.Status.RUNNING, heartbeat_at__lt=now - stale_after
    ).update(status=EvaluationBatch.Status.PENDING, message="its worker stopped answering; handed out again")
    lanes = set(
        EvaluationBatch.objects.filter(status=EvaluationBatch.Status.PENDING, run__status=EvaluationRun.Status.RUNNING)
        .filter(Q(not_before__isnull=True) | Q(not_before__lte=now))
        .values_list("run_id", "model_id").distinct()
    )
    busy = set(
        EvaluationBatch.objects.filter(status=EvaluationBatch.Status.RUNNING).values_list("run_id", "model_id")
    )
    queued = 0
    by_run: dict[int, list[int]] = defaultdict(list)
    for run_id, model_id in sorted(lanes - busy):
        by_run[run_id].append(model_id)
        queued += 1
    for run_id, model_ids in by_run.items():
        _queue_lanes(run_id, model_ids)
    finished = 0
    for run_id in EvaluationRun.objects.filter(status=EvaluationRun.Status.RUNNING).exclude(
        batches__status__in=[EvaluationBatch.Status.PENDING, EvaluationBatch.Status.RUNNING]
    ).values_list("id", flat=True):
        finished += _finish_run_if_complete(run_id) is not None
    return {"reclaimed": reclaimed, "lanes_queued": queued, "runs_finished": finished}
