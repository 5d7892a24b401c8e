"""Celery tasks for evaluation: thin wrappers that call one service."""
from __future__ import annotations

from celery import shared_task


@shared_task(acks_late=True)
def dataset_import_run(import_id: int) -> None:
    from evaluation import services

    services.dataset_import_run(import_id=import_id)


@shared_task(acks_late=True)
def evaluation_lane(run_id: int, model_id: int) -> str:
    from evaluation import engine

    return engine.evaluation_lane_run(run_id=run_id, model_id=model_id, client_factory=engine.client_for_model)


@shared_task(acks_late=True)
def evaluation_sweep() -> dict[str, int]:
    from evaluation import engine

    return engine.evaluation_sweep()
