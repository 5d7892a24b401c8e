"""The periodic sweeper: hand batches of dead workers back, queue lanes for waiting work, finish done runs."""
from __future__ import annotations

from collections import defaultdict
from datetime import timedelta

from django.conf import settings
from django.db.models import Q
from django.utils import timezone

from evaluation.models import EvaluationBatch, EvaluationRun
from evaluation.runs.lanes import _finish_run_if_complete
from evaluation.runs.services import _queue_lanes


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
