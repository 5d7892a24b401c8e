"""The Celery application; configuration comes from Django settings (CELERY_*)."""
from __future__ import annotations

import os
from typing import Any

from celery import Celery
from celery.signals import worker_process_shutdown, worker_shutdown

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")

app = Celery("avengers")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()


@worker_process_shutdown.connect
@worker_shutdown.connect
def _drop_live_metrics(**kwargs: Any) -> None:
    """A worker process that ends takes its live gauges (circuit states) out of /metrics; its counters stay."""
    from django.conf import settings

    if settings.METRICS_MULTIPROC_DIR:
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(os.getpid(), settings.METRICS_MULTIPROC_DIR)
