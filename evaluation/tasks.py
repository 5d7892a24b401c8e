"""Celery tasks for evaluation: thin wrappers that call one service."""
from __future__ import annotations

from celery import shared_task


@shared_task(acks_late=True)
def dataset_import_run(import_id: int) -> None:
    from evaluation import services

    services.dataset_import_run(import_id=import_id)
