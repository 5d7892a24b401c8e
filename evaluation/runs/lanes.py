"""A worker's lane: one model's batches of a run, its endpoint's slots kept busy, failures deferred."""
from __future__ import annotations

import concurrent.futures as futures
import os
import socket
import time
from collections.abc import Callable
from datetime import timedelta
from functools import partial
from queue import Empty, SimpleQueue

from django.conf import settings
from django.db import connection, transaction
from django.db.models import F, Q, QuerySet
from django.utils import timezone

from evaluation import providers
from evaluation.core.generation import CircuitOpenError, LLMClient, RetryPolicy
from evaluation.models import EvaluationBatch, EvaluationRun, EvaluationRunModel, GenerationCache, LanguageModel
from evaluation.runs.samples import _call, _grade, _Job, _Outcome, _plan_jobs, _write
from evaluation.runs.services import _queue_lanes
from evaluation.selectors import run_progress
from evaluation.tasks import evaluation_lane as evaluation_lane_task

ClientFactory = Callable[[LanguageModel], LLMClient]
_LOCK_NAMESPACE = 0x4156  # "AV": advisory locks of model lanes live in their own namespace


def client_for_model(model: LanguageModel) -> LLMClient:
    """Return this process's shared client of the model's endpoint (its slots and circuit are shared)."""
    return providers.client_for(base_url=model.base_url, api_key=model.api_key,
                                max_concurrency=model.max_concurrency, timeout_s=settings.GENERATION_TIMEOUT_S,
                                retry=RetryPolicy(max_attempts=settings.GENERATION_MAX_ATTEMPTS),
                                reset_after_s=settings.CIRCUIT_RESET_S)


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

