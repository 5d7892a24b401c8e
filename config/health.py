"""GET /healthz (the process answers) and GET /readyz (it can serve): no log-in, no secrets in the answers.

/readyz checks the database, the Celery broker, the active router snapshot's routing table and its embedder,
loading both into this process when they are not yet loaded (the first probe warms a fresh worker up). It answers
200 with each check, or 503 with each check and the reasons. A reason names what failed and its kind of error;
the error's own text (which may carry a URL or a user name) goes to the log only.
"""
from __future__ import annotations

import logging
import os
from typing import Any

from django.db import DatabaseError, connection
from django.contrib.auth.decorators import login_not_required
from django.http import HttpRequest, JsonResponse
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_safe

from config.celery import app as celery_app
from routing.serving import ServingError, service

_log = logging.getLogger(__name__)
BROKER_TIMEOUT_S = 2.0
Check = dict[str, Any]


@login_not_required
@never_cache
@require_safe
def healthz(request: HttpRequest) -> JsonResponse:
    """Say that the process answers; touch nothing else."""
    return JsonResponse({"status": "ok"})


@login_not_required
@never_cache
@require_safe
def readyz(request: HttpRequest) -> JsonResponse:
    """Check what serving needs; 200 when all is ready, else 503 with the reasons."""
    checks: dict[str, Check] = {"database": _database(), "broker": _broker()}
    if checks["database"]["ok"]:
        checks.update(_snapshot_and_embedder())
    else:
        checks["snapshot"] = checks["embedder"] = {"ok": False, "reason": "not checked: the database is unreachable"}
    reasons = [f"{name}: {check['reason']}" for name, check in checks.items() if not check["ok"]]
    body: dict[str, Any] = {"status": "unavailable" if reasons else "ok", "checks": checks}
    if reasons:
        body["reasons"] = reasons
    return JsonResponse(body, status=503 if reasons else 200)


def _failed(what: str, exc: BaseException) -> Check:
    _log.warning("readiness: %s", what, exc_info=exc)
    return {"ok": False, "reason": f"{what} ({type(exc).__name__})"}


def _database() -> Check:
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
    except DatabaseError as exc:
        return _failed("the database cannot be reached", exc)
    return {"ok": True}


def _broker() -> Check:
    url = str(celery_app.conf.broker_url or "")
    transport = url.split("://", 1)[0] if "://" in url else url.split(":", 1)[0]
    if transport == "filesystem":
        options = celery_app.conf.broker_transport_options or {}
        folders = {options.get(key) for key in ("data_folder_in", "data_folder_out", "processed_folder")} - {None}
        for folder in folders:
            if not (os.path.isdir(folder) and os.access(folder, os.W_OK | os.X_OK)):
                return {"ok": False, "transport": transport,
                        "reason": "a folder of the file broker (AVENGERS_DATA_DIR/broker) is missing or not writable"}
        return {"ok": True, "transport": transport}
    try:
        options = {**(celery_app.conf.broker_transport_options or {}), "socket_timeout": BROKER_TIMEOUT_S,
                   "socket_connect_timeout": BROKER_TIMEOUT_S}
        with celery_app.connection_for_write(connect_timeout=BROKER_TIMEOUT_S, transport_options=options) as conn:
            conn.ensure_connection(max_retries=1, interval_start=0, interval_step=0, timeout=BROKER_TIMEOUT_S)
    except Exception as exc:  # noqa: BLE001 - any failure to connect means not ready; the kind is reported
        return {**_failed("the broker cannot be reached", exc), "transport": transport}
    return {"ok": True, "transport": transport}


def _snapshot_and_embedder() -> dict[str, Check]:
    try:
        served = service.warm_up()
    except ServingError as error:
        if error.code == "embedding_failed":
            return {"snapshot": {"ok": True},
                    "embedder": {"ok": False, "reason": "the embedder could not embed a query; see the server's log"}}
        if error.code == "no_active_snapshot":
            reason = error.message
        else:
            reason = f"the active snapshot cannot route ({error.code})"
        return {"snapshot": {"ok": False, "reason": reason},
                "embedder": {"ok": False, "reason": "not checked: no routing table"}}
    except DatabaseError as exc:
        return {"snapshot": _failed("the routing table could not be read", exc),
                "embedder": {"ok": False, "reason": "not checked: no routing table"}}
    return {"snapshot": {"ok": True, "id": served.id, "version": served.version, "router": served.router},
            "embedder": {"ok": True, "name": served.embedder}}
