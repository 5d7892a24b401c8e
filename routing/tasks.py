"""Celery tasks for routing: thin wrappers that call one service."""
from __future__ import annotations

from celery import shared_task

# How long a snapshot waits between looks at the evaluation runs it depends on.
WAIT_FOR_RUNS_S = 10


@shared_task(acks_late=True)
def embedding_job_run(job_id: int) -> None:
    from routing import embedding_jobs

    embedding_jobs.embedding_job_run(job_id=job_id)


@shared_task(acks_late=True, bind=True)
def snapshot_build(self, snapshot_id: int) -> str:  # type: ignore[no-untyped-def]
    from routing import building

    outcome = building.snapshot_build(snapshot_id=snapshot_id)
    if outcome == "waiting" and not self.app.conf.task_always_eager:
        snapshot_build.apply_async((snapshot_id,), countdown=WAIT_FOR_RUNS_S)
    return outcome
