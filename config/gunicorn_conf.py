"""gunicorn settings: the hooks that let GET /metrics add up the values of every worker.

    PROMETHEUS_MULTIPROC_DIR=.data/metrics gunicorn -c config/gunicorn_conf.py config.wsgi:application

With PROMETHEUS_MULTIPROC_DIR set, each process writes its metrics to files in that folder (prometheus_client's
multiprocess mode) and /metrics reads them all. At start the folder is created and the files of processes that
are gone (an earlier run) are removed; the files of live processes that share it (a Celery worker started first)
stay. When a worker exits, its gauges of live processes (circuit states) are dropped; its counters stay counted.
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

_PID = re.compile(r"_(\d+)\.db$")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def on_starting(server: Any) -> None:
    path = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if not path:
        return
    folder = Path(path)
    folder.mkdir(parents=True, exist_ok=True)
    for file in folder.glob("*.db"):
        match = _PID.search(file.name)
        if match and not _alive(int(match.group(1))):
            file.unlink(missing_ok=True)


def child_exit(server: Any, worker: Any) -> None:
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(worker.pid)
