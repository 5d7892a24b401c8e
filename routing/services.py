"""Write operations for router snapshots: create, derive (add a model or a dataset) and activate them.

A derived snapshot first evaluates what its new model or dataset misses. Embedding jobs are in
``routing.embedding_jobs``; a snapshot's build (the ``snapshot_build`` task) is in ``routing.building``.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from functools import partial
from typing import Any

from django.conf import settings
from django.db import connection, transaction
from django.db.models import F, Max
from django.urls import reverse

from avengers_web.service_errors import ServiceError
from avengers_web.services import User, activity_record, owner_of
from evaluation.models import Dataset, LanguageModel, Query
from evaluation.runs.services import evaluation_run_create
from routing.core.clustering import CLUSTERING_METHODS
from routing.core.heldout import RouterSpec, json_params
from routing.core.router import ROUTERS
from routing.embedding_jobs import check_embedder
from routing.models import RouterSnapshot, SnapshotActivation
from routing.tasks import snapshot_build as snapshot_build_task

_VERSION_LOCK = 0x5256  # "RV": serialises version numbers of new snapshots


def _parse_shrinkage(value: str | float) -> str:
    text = str(value).strip().lower()
    if text == "auto":
        return "auto"
    try:
        number = float(text)
    except ValueError:
        raise ServiceError("shrinkage", 'must be "auto" or a number of pseudo-queries >= 0') from None
    if not number >= 0:
        raise ServiceError("shrinkage", "must be >= 0")
    return repr(number)


def _next_version() -> int:
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_advisory_xact_lock(%s)", [_VERSION_LOCK])
    return (RouterSnapshot.objects.aggregate(v=Max("version"))["v"] or 0) + 1


def snapshot_create(
    *,
    datasets: Sequence[Dataset],
    models: Sequence[LanguageModel],
    embedder: str | None = None,
    method: str = "kmeans",
    k: int = 64,
    seed: int = 42,
    shrinkage: str | float = "auto",
    team_size: int | None = None,
    team: Sequence[str] | None = None,
    label: str = "",
    user: User = None,
    queue: bool = True,
    kind: str = RouterSnapshot.Kind.BUILT,
    parent: RouterSnapshot | None = None,
    router: str = "auto",
    router_params: Mapping[str, Any] | None = None,
) -> RouterSnapshot:
    """Create a snapshot and queue its build; raise ServiceError naming the bad input and create nothing.

    ``embedder`` defaults to AVENGERS_EMBEDDER. ``router`` is "auto" (the default router, chosen at build time
    by CV on train) or a registered router's name, with ``router_params`` overriding its defaults."""
    embedder = embedder or settings.EMBEDDER
    check_embedder(embedder)
    if method not in CLUSTERING_METHODS:
        raise ServiceError("method", f"unknown method {method!r}; use one of {', '.join(sorted(CLUSTERING_METHODS))}")
    if not datasets:
        raise ServiceError("datasets", "choose at least one dataset")
    if not models:
        raise ServiceError("models", "choose at least one model")
    if k < 1:
        raise ServiceError("k", "must be at least 1")
    router_params = _check_router(router, router_params)
    shrinkage_setting = _parse_shrinkage(shrinkage)
    names = [m.name for m in models]
    if team is not None:
        unknown = [t for t in team if t not in names]
        if unknown or not team:
            raise ServiceError("team", f"{', '.join(unknown) or 'an empty team'}: the team must be models of the pool")
    if team_size is not None and not 1 <= team_size <= len(models):
        raise ServiceError("team_size", f"must be between 1 and the pool size ({len(models)})")
    n_train = Query.objects.filter(dataset__in=datasets, split="train").count()
    if n_train < k:
        raise ServiceError("k", f"K={k} is more than the {n_train} train queries of these datasets")
    with transaction.atomic():
        snapshot = RouterSnapshot.objects.create(
            version=_next_version(), label=label, kind=kind, parent=parent, embedder=embedder, method=method, k=k,
            seed=seed, shrinkage_setting=shrinkage_setting, team_size=team_size, team=list(team or []),
            team_chosen_by_hand=team is not None, created_by=owner_of(user), router=router,
            router_params=router_params,
        )
        snapshot.datasets.set(datasets)
        snapshot.pool.set(models)
        if queue:
            transaction.on_commit(partial(snapshot_build_task.delay, snapshot.pk))
    activity_record(actor=user, verb="started a router snapshot", target=f"v{snapshot.version} ({snapshot.get_kind_display()})",
                    url=_snapshot_url(snapshot))
    return snapshot


def _check_router(router: str, params: Mapping[str, Any] | None) -> dict[str, Any]:
    """Validate a router setting; return its parameters as stored (JSON: infinity as "inf")."""
    if not isinstance(router, str) or (router != "auto" and router not in ROUTERS):
        raise ServiceError("router", f"unknown router {router!r}; use auto or one of {', '.join(ROUTERS)}")
    if params is not None and not isinstance(params, Mapping):
        raise ServiceError("router_params", "must be an object of parameter names and values")
    params = dict(params or {})
    if router == "auto" and params:
        raise ServiceError("router_params", "parameters need a named router; auto chooses among fixed candidates")
    if router == "auto":
        return {}
    try:
        spec = RouterSpec.from_json({"router": router, "params": params})
    except ValueError as exc:
        raise ServiceError("router_params", str(exc)) from None
    return json_params(spec.params)


def _router_setting(parent: RouterSnapshot) -> dict[str, Any]:
    """A derived snapshot chooses its router as its parent did (auto for one built before routers were chosen)."""
    if not parent.router_chosen:
        return {"router": "auto", "router_params": {}}
    return {"router": parent.router, "router_params": parent.router_params}


def _snapshot_url(snapshot: RouterSnapshot) -> str:
    try:
        return reverse("snapshot-detail", args=[snapshot.pk])
    except Exception:
        return ""


def _missing_scores(model: LanguageModel, datasets: Sequence[Dataset]) -> dict[int, int]:
    """Return dataset id -> train queries of it that the model has no graded answer to."""
    result = {}
    for dataset in datasets:
        train = Query.objects.filter(dataset=dataset, split="train")
        scored = train.filter(responses__model=model, responses__score__isnull=False, responses__error="").distinct()
        missing = train.count() - scored.count()
        if missing:
            result[dataset.pk] = missing
    return result


def _evaluate_missing(snapshot: RouterSnapshot, models: Sequence[LanguageModel], datasets: Sequence[Dataset],
                      user: User) -> int:
    """Start evaluation runs for the train queries these models miss; offline models are left as they are."""
    started = 0
    for model in models:
        if model.is_offline or not model.is_active:
            continue
        for dataset in datasets:
            if dataset.pk in _missing_scores(model, [dataset]):
                run = evaluation_run_create(dataset=dataset, models=[model], split="train", user=user)
                snapshot.evaluation_runs.add(run)
                started += 1
    return started


def snapshot_add_model(*, snapshot: RouterSnapshot, model: LanguageModel, user: User = None,
                       queue: bool = True, evaluate_missing: bool = True,
                       team: Sequence[str] | None = None) -> RouterSnapshot:
    """Derive a snapshot with the same clusters and the model's profile added (evaluating it first if needed).

    With ``evaluate_missing`` off, nothing is evaluated: the profile is built from the scores already stored,
    train queries the model has not answered count as missing, and in clusters where it has few or no scores
    its estimate leans on its neighbourhood and overall mean (see routing.core.profiles). ``team`` chooses
    the derived snapshot's team by hand; by default it is chosen as the parent's was.
    """
    if snapshot.status != RouterSnapshot.Status.DONE:
        raise ServiceError("snapshot", f"v{snapshot.version} is {snapshot.status}; derive from a finished snapshot")
    pool = list(snapshot.pool.all())
    if model in pool:
        raise ServiceError("model", f"{model.name} is already in v{snapshot.version}")
    datasets = list(snapshot.datasets.all())
    scored = Query.objects.filter(dataset__in=datasets, split="train", responses__model=model,
                                  responses__score__isnull=False, responses__error="").exists()
    if not scored and not evaluate_missing:
        raise ServiceError("model", f"{model.name} has no scores on the snapshot's train queries; evaluate it "
                                    "first, or let the snapshot evaluate what is missing")
    if model.is_offline and not scored:
        raise ServiceError("model", f"{model.name} has no scores on the snapshot's train queries and no "
                                    "endpoint to evaluate it; import its results or give it a base URL")
    if team is None and snapshot.team_chosen_by_hand:
        team = snapshot.team
    with transaction.atomic():
        derived = snapshot_create(
            datasets=datasets, models=[*pool, model], embedder=snapshot.embedder, method=snapshot.method,
            k=snapshot.k, seed=snapshot.seed, shrinkage=snapshot.shrinkage if snapshot.shrinkage is not None else "auto",
            team_size=snapshot.team_size, team=team, label=f"v{snapshot.version} + {model.name}", user=user,
            queue=queue, kind=RouterSnapshot.Kind.ADD_MODEL, parent=snapshot, **_router_setting(snapshot),
        )
        if evaluate_missing:
            _evaluate_missing(derived, [model], datasets, user)
    return derived


def snapshot_add_dataset(*, snapshot: RouterSnapshot, dataset: Dataset, user: User = None,
                         queue: bool = True) -> RouterSnapshot:
    """Derive a snapshot over the union of datasets, re-clustered, after evaluating the pool on the new one."""
    if snapshot.status != RouterSnapshot.Status.DONE:
        raise ServiceError("snapshot", f"v{snapshot.version} is {snapshot.status}; derive from a finished snapshot")
    datasets = list(snapshot.datasets.all())
    if dataset in datasets:
        raise ServiceError("dataset", f"{dataset.name} is already in v{snapshot.version}")
    if not Query.objects.filter(dataset=dataset, split="train").exists():
        raise ServiceError("dataset", f"{dataset.name} has no train queries to calibrate on")
    pool = list(snapshot.pool.all())
    with transaction.atomic():
        derived = snapshot_create(
            datasets=[*datasets, dataset], models=pool, embedder=snapshot.embedder, method=snapshot.method,
            k=snapshot.k, seed=snapshot.seed, shrinkage=snapshot.shrinkage_setting, team_size=snapshot.team_size,
            team=snapshot.team if snapshot.team_chosen_by_hand else None,
            label=f"v{snapshot.version} + {dataset.name}", user=user, queue=queue,
            kind=RouterSnapshot.Kind.ADD_DATASET, parent=snapshot, **_router_setting(snapshot),
        )
        _evaluate_missing(derived, pool, [dataset], user)
    return derived


def snapshot_activate(*, snapshot: RouterSnapshot, user: User = None) -> RouterSnapshot:
    """Make this snapshot the one routing uses; record who and when."""
    if snapshot.status != RouterSnapshot.Status.DONE:
        raise ServiceError("snapshot", f"v{snapshot.version} is {snapshot.status}; only a finished snapshot "
                                       "can route")
    with transaction.atomic():
        # Each revision bump tells every web process to reload what it serves (routing.serving).
        RouterSnapshot.objects.select_for_update().filter(is_active=True).exclude(pk=snapshot.pk).update(
            is_active=False, revision=F("revision") + 1)
        RouterSnapshot.objects.filter(pk=snapshot.pk).update(is_active=True, revision=F("revision") + 1)
        SnapshotActivation.objects.create(snapshot=snapshot, activated_by=owner_of(user))
    activity_record(actor=user, verb="activated router snapshot", target=f"v{snapshot.version}",
                    url=_snapshot_url(snapshot))
    snapshot.refresh_from_db()
    return snapshot
