"""Services for evaluation runs: create, cancel and resume them (the lanes in ``lanes`` do the work)."""
from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from datetime import timedelta
from functools import partial
from typing import Any

from django.conf import settings
from django.db import transaction
from django.db.models import Count
from django.urls import reverse
from django.utils import timezone

from avengers_web.service_errors import ServiceError
from avengers_web.services import User, activity_record, owner_of
from evaluation.core.prompts import params_key, resolve_template
from evaluation.core.sampling import validate_sampling_params
from evaluation.models import Dataset, EvaluationBatch, EvaluationRun, EvaluationRunModel, LanguageModel, Query
from evaluation.selectors import run_model_responses, run_progress, run_queries, run_query_ids
from evaluation.tasks import evaluation_lane as evaluation_lane_task

logger = logging.getLogger(__name__)
MAX_SAMPLES = 100
REQUEST_PARAMS = ("temperature", "top_p", "max_tokens", "seed", "stop")
MAX_BATCH_SIZE = 1000
DEFAULT_BATCH_SIZE = 100


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
