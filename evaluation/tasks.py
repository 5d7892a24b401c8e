"""Celery tasks for evaluation: thin wrappers that call one service."""
from __future__ import annotations

from celery import shared_task


@shared_task(acks_late=True)
def dataset_import_run(import_id: int) -> None:
    from evaluation import services

    services.dataset_import_run(import_id=import_id)


@shared_task(acks_late=True)
def evaluation_lane(run_id: int, model_id: int) -> str:
    from evaluation.runs import lanes

    return lanes.evaluation_lane_run(run_id=run_id, model_id=model_id, client_factory=lanes.client_for_model)


@shared_task(acks_late=True)
def evaluation_sweep() -> dict[str, int]:
    from evaluation.runs import sweep

    return sweep.evaluation_sweep()
