"""What a request is served from: each snapshot's ``RoutingTable``, kept per process, and the models' rows.

The (id, revision) of the snapshot a request is served from is read at most every ``AVENGERS_ROUTING_REFRESH_S``
seconds, and a table older than that revision is reloaded, so activating another snapshot, or editing one's
label, reaches every process within that time. ``snapshot_table_get`` is the selector that reads a table.
"""
from __future__ import annotations

import gc
import threading
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from django.conf import settings
from django.db.models import Count

from evaluation.models import LanguageModel
from routing.core.dispatch import RoutingTable
from routing.models import RouterSnapshot, SnapshotCluster, SnapshotProfile, SnapshotQuery
from routing.serving import ServingError


def keep_loaded() -> None:
    """What was just loaded stays for the life of the process (a routing table, an embedder): take everything
    alive now out of the cyclic garbage collector's reach, as config.wsgi does at start-up, so that full
    collections stay short (docs/BENCHMARKS.md)."""
    gc.freeze()


@dataclass(frozen=True)
class Served:
    """What a request is served from: the snapshot's id, version and embedder, and its routing table."""

    id: int
    version: int
    embedder: str
    table: RoutingTable
    router: str = ""  # the label of the router the snapshot routes with
    revision: int = 0  # the snapshot's revision when the table was read


_tables: dict[int, Served] = {}  # snapshot id -> its table, as of the revision it records
_tables_lock = threading.Lock()
# (snapshot id, revision) of the active snapshot (key None) and of each snapshot a request named, as last read.
_current: dict[int | None, tuple[float, tuple[int, int]]] = {}


def current_snapshot(snapshot_id: int | None) -> tuple[int, int] | None:
    """Return (id, revision) of the active snapshot, or of the one named; None when there is no such snapshot.

    One indexed query at most every AVENGERS_ROUTING_REFRESH_S (0: on every request). Activating a snapshot,
    or editing its label, bumps revisions, so every process serves the change within that time.
    """
    now = time.monotonic()
    checked = _current.get(snapshot_id)
    if checked is not None and now - checked[0] < settings.ROUTING_REFRESH_S:
        return checked[1]
    rows = RouterSnapshot.objects.filter(is_active=True) if snapshot_id is None else \
        RouterSnapshot.objects.filter(pk=snapshot_id)
    found = next(iter(rows.order_by().values_list("id", "revision")[:1]), None)
    if found is None:
        _current.pop(snapshot_id, None)  # unknown ids are not remembered: a caller could send any number of them
    else:
        _current[snapshot_id] = (now, found)
    return found


def served(snapshot_id: int | None) -> Served:
    """Return the table of the active snapshot (None) or of the one named, loading it when it is not current."""
    current = current_snapshot(snapshot_id)
    if current is None:
        if snapshot_id is None:
            raise ServingError(503, "no_active_snapshot", "No router snapshot is active. Build one and activate it "
                                                          "(dashboard: Routing, or POST /api/v1/snapshots/{id}/activate).")
        _tables.pop(snapshot_id, None)
        raise ServingError(404, "unknown_snapshot", f"There is no router snapshot {snapshot_id}.")
    snapshot_id, revision = current
    found = _tables.get(snapshot_id)
    # Older than the database says: reload. (A table read after the check may be newer; it stays.)
    if found is None or found.revision < revision:
        with _tables_lock:
            found = _tables.get(snapshot_id)
            if found is None or found.revision < revision:
                found = snapshot_table_get(snapshot_id)
                _tables[snapshot_id] = found
                keep_loaded()
    return found


def snapshot_table_get(snapshot_id: int) -> Served:
    """Read a built snapshot's routing table; raise ServingError when it is missing, unbuilt or incomplete."""
    snapshot = RouterSnapshot.objects.filter(pk=snapshot_id).first()
    if snapshot is None:
        raise ServingError(404, "unknown_snapshot", f"There is no router snapshot {snapshot_id}.")
    if snapshot.status != RouterSnapshot.Status.DONE:
        raise ServingError(409, "snapshot_not_ready",
                           f"Snapshot v{snapshot.version} is {snapshot.get_status_display()}, not built; it cannot "
                           "route until its build has finished.")
    clusters = list(SnapshotCluster.objects.filter(snapshot=snapshot).order_by("index")
                    .values_list("index", "centroid", "datasets"))
    if not clusters or [c[0] for c in clusters] != list(range(len(clusters))):
        raise ServingError(409, "snapshot_incomplete", f"Snapshot v{snapshot.version} has no complete set of clusters.")
    profiles = list(SnapshotProfile.objects.filter(snapshot=snapshot)
                    .values_list("model__name", "cluster", "n", "mean", "estimate"))
    names = sorted({p[0] for p in profiles})
    column = {name: j for j, name in enumerate(names)}
    k = len(clusters)
    estimates = np.full((k, len(names)), np.nan)
    totals, counts = np.zeros(len(names)), np.zeros(len(names))
    for name, cluster, n, mean, estimate in profiles:
        j = column[name]
        if estimate is not None:
            estimates[cluster, j] = estimate
        if mean is not None and n:
            totals[j] += mean * n
            counts[j] += n
    overall = np.where(counts > 0, totals / np.where(counts > 0, counts, 1), np.nan)
    team = tuple(m for m in snapshot.team if m in column) or tuple(names)
    task_types: list[Counter[str]] = [Counter() for _ in range(k)]
    for cluster, task_type, count in (SnapshotQuery.objects.filter(snapshot=snapshot)
                                      .values_list("cluster", "query__task_type").annotate(n=Count("id"))):
        if task_type:
            task_types[cluster][task_type] += count
    from routing.building import snapshot_router

    router = snapshot_router(snapshot)
    if router is not None and tuple(router.models) != tuple(names):
        raise ServingError(409, "snapshot_incomplete", f"Snapshot v{snapshot.version}'s router and profiles cover "
                                                       "different models.")
    table = RoutingTable(
        centroids=np.asarray([c[1] for c in clusters], dtype=np.float32), router=router,
        models=tuple(names), estimates=estimates, overall=overall if router is None else router.overall, team=team,
        categories=tuple(max(c[2].items(), key=lambda item: (item[1], item[0]))[0] if c[2] else "" for c in clusters),
        task_types=tuple(t.most_common(1)[0][0] if t else "" for t in task_types),
    )
    return Served(snapshot_id, snapshot.version, snapshot.embedder, table,
                  (snapshot.router_chosen or {}).get("label", "cluster"), snapshot.revision)


def snapshot_choices() -> list[dict[str, Any]]:
    """The snapshots a request may name (built ones), newest first, for GET /v1/models."""
    return list(RouterSnapshot.objects.filter(status=RouterSnapshot.Status.DONE)
                .order_by("-version").values("id", "version", "label", "is_active", "created_at"))


_models_cache: tuple[float, dict[str, LanguageModel]] = (0.0, {})


def language_models(names: Sequence[str]) -> dict[str, LanguageModel]:
    """Return the named models, read from the database at most every AVENGERS_ROUTING_REFRESH_S seconds."""
    global _models_cache
    checked, cached = _models_cache
    if time.monotonic() - checked >= settings.ROUTING_REFRESH_S or any(n not in cached for n in names):
        cached = {m.name: m for m in LanguageModel.objects.filter(name__in=set(names) | set(cached))}
        _models_cache = (time.monotonic(), cached)
    return cached


def forget() -> None:
    """Drop what this process has cached: tables, which snapshots they are, the models (tests use it).

    Nothing else needs it: a snapshot's table is reloaded when its revision changes, the rest is re-read within
    AVENGERS_ROUTING_REFRESH_S.
    """
    global _models_cache
    with _tables_lock:
        _tables.clear()
        _current.clear()
    _models_cache = (0.0, {})
