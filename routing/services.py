"""Write operations for routing: embedding jobs, router snapshots (build, derive, activate) and their evaluation.

How a snapshot is built (``snapshot_build``, a Celery task, resumable because every step reads what is stored):

1. Wait until the evaluation runs it started (a new model, a new dataset) have finished.
2. Embed the train and test queries of its datasets that have no vector under its embedder yet.
3. Read the (queries x models) score matrix: each model's mean graded score per query, NaN where missing.
4. Cluster the train embeddings (or, for a new model, take the parent's clusters as they are), choose the
   shrinkage (5-fold CV on train when "auto"), build the capability profiles, pick the team by rank score.
5. Choose the router it routes with (``router`` "auto": 5-fold CV on train among the default candidates,
   ``routing.core.heldout.DEFAULT_CANDIDATES``; or the router named), and evaluate it, the compared routers
   and the baselines on the test split (the scores stored) with the same functions as
   `python -m routing.offline evaluate`. The routing service fits the chosen router again from what is stored
   (``snapshot_router``), so live routing is the router measured here.
6. Lay out a 2-D map and a cluster order, then write everything in one transaction: a failure part-way
   leaves the snapshot "failed" with nothing half-written.
"""
from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from functools import partial
from typing import Any

import numpy as np
from django.conf import settings
from django.db import connection, transaction
from django.db.models import Avg, F, Max, Q
from django.urls import reverse
from django.utils import timezone
from numpy.typing import NDArray

from avengers_web.service_errors import ServiceError
from avengers_web.services import User, activity_record, owner_of
from evaluation import engine
from evaluation.models import Dataset, LanguageModel, ModelResponse, Query, QueryEmbedding
from routing.core.clustering import CLUSTERING_METHODS, Clustering, fit_clusters
from routing.core.embedding import EMBEDDERS, CachedEmbedder, Embedder, EmbeddingCache, get_embedder
from routing.core.heldout import (
    COMPARED,
    RouterConfig,
    RouterSpec,
    Split,
    choose_shrinkage,
    cross_validate,
    json_params,
    router_candidates,
    run_protocol,
    select_router,
)
from routing.core.layout import order_clusters, project_2d
from routing.core.profiles import build_profiles, first_places, rank_scores, select_models
from routing.core.router import ROUTERS, Clusterings, Router, fit_router
from routing.models import (
    EmbeddingJob,
    RouterSnapshot,
    SnapshotActivation,
    SnapshotCluster,
    SnapshotProfile,
    SnapshotQuery,
)
from routing.tasks import embedding_job_run as embedding_job_run_task
from routing.tasks import snapshot_build as snapshot_build_task

logger = logging.getLogger(__name__)
EmbedderFactory = Callable[[str], Embedder]
EMBED_BATCH = 256
_VERSION_LOCK = 0x5256  # "RV": serialises version numbers of new snapshots


# ---------------------------------------------------------------------------------------------- embedding


def default_embedder(name: str) -> Embedder:
    """Return the named embedder behind the on-disk cache shared with `python -m routing.offline`."""
    cache = settings.EMBEDDING_CACHE_PATH
    cache.parent.mkdir(parents=True, exist_ok=True)
    return CachedEmbedder(get_embedder(name), EmbeddingCache(cache))


def _check_embedder(name: str) -> None:
    if name not in EMBEDDERS:
        raise ServiceError("embedder", f"unknown embedder {name!r}; use one of {', '.join(sorted(EMBEDDERS))}")


def embed_missing(*, query_ids: Sequence[int], embedder_name: str, embedder: Embedder,
                  progress: Callable[[int, int], None] | None = None) -> int:
    """Store a vector for each query that has none under this embedder; return how many were computed."""
    have = set(QueryEmbedding.objects.filter(query_id__in=list(query_ids), embedder=embedder_name)
               .values_list("query_id", flat=True))
    missing = [q for q in query_ids if q not in have]
    done = 0
    for start in range(0, len(missing), EMBED_BATCH):
        chunk = missing[start:start + EMBED_BATCH]
        texts = dict(Query.objects.filter(id__in=chunk).values_list("id", "text"))
        vectors = embedder.embed([texts[q] for q in chunk])
        # Each batch is committed on its own: a job that dies keeps what it embedded and resumes after it.
        QueryEmbedding.objects.bulk_create(
            [QueryEmbedding(query_id=q, embedder=embedder_name, dimensions=int(v.shape[0]), vector=v)
             for q, v in zip(chunk, vectors)],
            ignore_conflicts=True,
        )
        done += len(chunk)
        if progress is not None:
            progress(done, len(missing))
    return done


def embedding_job_create(*, datasets: Sequence[Dataset], embedder: str | None = None, user: User = None,
                         queue: bool = True) -> EmbeddingJob:
    """Queue a job that embeds the datasets' queries that have no vector under ``embedder`` (default
    AVENGERS_EMBEDDER)."""
    embedder = embedder or settings.EMBEDDER
    _check_embedder(embedder)
    if not datasets:
        raise ServiceError("datasets", "choose at least one dataset")
    with transaction.atomic():
        job = EmbeddingJob.objects.create(embedder=embedder, created_by=owner_of(user))
        job.datasets.set(datasets)
        if queue:
            transaction.on_commit(partial(embedding_job_run_task.delay, job.pk))
    return job


def embedding_job_run(*, job_id: int, embedder_factory: EmbedderFactory = default_embedder) -> None:
    """Claim the job and embed what is missing, reporting progress; a re-run does only what is left."""
    stale = timezone.now() - timezone.timedelta(minutes=10)
    claimed = EmbeddingJob.objects.filter(pk=job_id).filter(
        Q(status=EmbeddingJob.Status.PENDING) | Q(status=EmbeddingJob.Status.RUNNING, heartbeat_at__lt=stale)
    ).update(status=EmbeddingJob.Status.RUNNING, started_at=timezone.now(), heartbeat_at=timezone.now())
    if claimed != 1:
        return
    job = EmbeddingJob.objects.get(pk=job_id)
    query_ids = list(Query.objects.filter(dataset__in=job.datasets.all()).order_by("id").values_list("id", flat=True))

    def progress(done: int, total: int) -> None:
        EmbeddingJob.objects.filter(pk=job_id).update(done=done, total=total, heartbeat_at=timezone.now())

    try:
        computed = embed_missing(query_ids=query_ids, embedder_name=job.embedder,
                                 embedder=embedder_factory(job.embedder), progress=progress)
    except Exception as exc:
        EmbeddingJob.objects.filter(pk=job_id).update(status=EmbeddingJob.Status.FAILED, message=str(exc)[:2000],
                                                      finished_at=timezone.now())
        raise
    EmbeddingJob.objects.filter(pk=job_id).update(
        status=EmbeddingJob.Status.DONE, finished_at=timezone.now(),
        message=f"{computed} queries embedded; {len(query_ids) - computed} already had a vector")


# ---------------------------------------------------------------------------------------------- reading


def embeddings_of(query_ids: Sequence[int], embedder_name: str) -> NDArray[np.float32]:
    """Return the stored vectors of these queries, in this order."""
    rows = dict(QueryEmbedding.objects.filter(query_id__in=list(query_ids), embedder=embedder_name)
                .values_list("query_id", "vector"))
    missing = [q for q in query_ids if q not in rows]
    if missing:
        raise ServiceError("embedder", f"{len(missing)} queries have no {embedder_name} vector yet")
    return np.asarray([rows[q] for q in query_ids], dtype=np.float32).reshape(len(query_ids), -1)


def score_matrix(query_ids: Sequence[int], model_ids: Sequence[int]) -> NDArray[np.float64]:
    """Return (queries x models) mean graded scores, NaN where a model has no graded answer to a query."""
    position = {q: i for i, q in enumerate(query_ids)}
    column = {m: j for j, m in enumerate(model_ids)}
    matrix = np.full((len(query_ids), len(model_ids)), np.nan)
    rows = (ModelResponse.objects.filter(query_id__in=list(query_ids), model_id__in=list(model_ids),
                                         score__isnull=False, error="")
            .values_list("query_id", "model_id").annotate(mean=Avg("score")).order_by())
    for query_id, model_id, mean in rows:
        matrix[position[query_id], column[model_id]] = mean
    return matrix


def snapshot_router(snapshot: RouterSnapshot) -> Router | None:
    """Fit the snapshot's chosen router again from what the snapshot stored, exactly as its build did.

    The build fitted it on the snapshot's train queries (their vectors in pgvector, their scores) with the
    snapshot's own clusters; fitting is deterministic, so the routing service gets the same router. None for
    a snapshot built before routers were chosen: it routes with its stored per-cluster profiles.
    """
    if not snapshot.router_chosen:
        return None
    spec = RouterSpec.from_json(snapshot.router_chosen)
    train_ids = list(snapshot.assignments.order_by("query_id").values_list("query_id", flat=True))
    pool = sorted(snapshot.pool.all(), key=lambda m: m.name)
    names_of = dict(Query.objects.filter(id__in=train_ids).values_list("id", "dataset__name"))
    train = Split(embeddings_of(train_ids, snapshot.embedder), score_matrix(train_ids, [m.pk for m in pool]),
                  np.asarray([names_of[q] for q in train_ids], dtype=np.str_))
    rows = list(snapshot.clusters.order_by("index").values_list("centroid", flat=True))
    clusterings = Clusterings(train.embeddings)
    clusterings.put(Clustering(method=snapshot.method, k=len(rows), seed=snapshot.seed,
                               centroids=np.asarray(rows, dtype=np.float32)))
    return fit_router(spec.name, train, [m.name for m in pool], spec.params, clusterings)


def _split_ids(datasets: Sequence[Dataset], split: str) -> list[int]:
    return list(Query.objects.filter(dataset__in=datasets, split=split).order_by("id").values_list("id", flat=True))


# ---------------------------------------------------------------------------------------------- snapshots


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
    _check_embedder(embedder)
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
                run = engine.evaluation_run_create(dataset=dataset, models=[model], split="train", user=user)
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


# ---------------------------------------------------------------------------------------------- building


class _Progress:
    """Write the build's stage and progress to its row, at most a few times a second."""

    def __init__(self, snapshot_id: int) -> None:
        self.snapshot_id = snapshot_id
        self.last = 0.0

    def stage(self, name: str, total: int = 0) -> None:
        RouterSnapshot.objects.filter(pk=self.snapshot_id).update(stage=name, progress_done=0, progress_total=total)
        self.last = time.monotonic()

    def __call__(self, done: int, total: int) -> None:
        if time.monotonic() - self.last >= 0.25 or done >= total:
            RouterSnapshot.objects.filter(pk=self.snapshot_id).update(progress_done=done, progress_total=total)
            self.last = time.monotonic()


def snapshot_build(*, snapshot_id: int, embedder_factory: EmbedderFactory = default_embedder) -> str:
    """Build the snapshot (see the module docstring); return "waiting", "built", "failed" or "skipped"."""
    snapshot = RouterSnapshot.objects.get(pk=snapshot_id)
    if snapshot.is_finished:
        return "skipped"
    runs = list(snapshot.evaluation_runs.all())
    if any(run.is_active for run in runs):
        RouterSnapshot.objects.filter(pk=snapshot_id).update(
            status=RouterSnapshot.Status.EVALUATING, stage="evaluating",
            message=f"waiting for {sum(r.is_active for r in runs)} evaluation run(s)")
        return "waiting"
    claimed = RouterSnapshot.objects.filter(
        pk=snapshot_id, status__in=[RouterSnapshot.Status.PENDING, RouterSnapshot.Status.EVALUATING]
    ).update(status=RouterSnapshot.Status.BUILDING, message="")
    if claimed != 1:
        return "skipped"  # another worker builds it
    progress = _Progress(snapshot_id)
    try:
        result = _build(snapshot, progress, embedder_factory)
    except Exception as exc:
        logger.exception("building snapshot %s failed", snapshot_id)
        RouterSnapshot.objects.filter(pk=snapshot_id).update(
            status=RouterSnapshot.Status.FAILED, finished_at=timezone.now(), message=f"{type(exc).__name__}: {exc}"[:2000])
        return "failed"
    return result


def _build(snapshot: RouterSnapshot, progress: _Progress, embedder_factory: EmbedderFactory) -> str:
    timings: dict[str, float] = {}
    started = time.perf_counter()
    datasets = list(snapshot.datasets.all())
    pool = sorted(snapshot.pool.all(), key=lambda m: m.name)
    names = [m.name for m in pool]
    train_ids, test_ids = _split_ids(datasets, "train"), _split_ids(datasets, "test")
    progress.stage("embedding", len(train_ids) + len(test_ids))
    embed_missing(query_ids=train_ids + test_ids, embedder_name=snapshot.embedder,
                  embedder=_LazyEmbedder(embedder_factory, snapshot.embedder), progress=progress)
    timings["embedding_s"] = time.perf_counter() - started

    mark = time.perf_counter()
    progress.stage("reading scores")
    names_of = dict(Query.objects.filter(id__in=train_ids + test_ids).values_list("id", "dataset__name"))
    train = Split(embeddings_of(train_ids, snapshot.embedder), score_matrix(train_ids, [m.pk for m in pool]),
                  np.asarray([names_of[q] for q in train_ids], dtype=np.str_))
    test = Split(embeddings_of(test_ids, snapshot.embedder), score_matrix(test_ids, [m.pk for m in pool]),
                 np.asarray([names_of[q] for q in test_ids], dtype=np.str_))
    timings["reading_s"] = time.perf_counter() - mark

    mark = time.perf_counter()
    progress.stage("clustering")
    config = RouterConfig(k=snapshot.k, seed=snapshot.seed, method=snapshot.method)
    clustering, labels = _clusters(snapshot, train, train_ids, config)
    timings["clustering_s"] = time.perf_counter() - mark

    mark = time.perf_counter()
    cv: dict[str, float] = {}
    if snapshot.shrinkage_setting == "auto":
        progress.stage("choosing the shrinkage (5-fold CV)", 5)
        folds = cross_validate(train, names, config, progress=progress)
        shrinkage = choose_shrinkage(folds)
        cv = {str(s): round(float(np.mean(v)), 3) for s, v in folds.items()}
    else:
        shrinkage = float(snapshot.shrinkage_setting)
    config = replace(config, shrinkage=shrinkage)
    timings["shrinkage_s"] = time.perf_counter() - mark

    mark = time.perf_counter()
    progress.stage("profiling")
    profiles = build_profiles(labels, train.scores, k=clustering.k, models=names, shrinkage=shrinkage,
                              centroids=clustering.centroids, neighbours=config.neighbours)
    team = list(snapshot.team) if snapshot.team_chosen_by_hand else select_models(profiles, snapshot.team_size or len(names))
    scores = rank_scores(profiles)
    timings["profiling_s"] = time.perf_counter() - mark

    mark = time.perf_counter()
    clusterings = Clusterings(train.embeddings)
    clusterings.put(clustering)  # the snapshot's own clusters (a parent's, when a model was added)
    stored = RouterSpec.from_json({"router": snapshot.router, "params": snapshot.router_params}).params \
        if snapshot.router != "auto" else {}
    candidates = router_candidates(snapshot.router, stored, k=snapshot.k, method=snapshot.method)
    if len(candidates) > 1:
        progress.stage("choosing the router (5-fold CV)", 5)
    chosen, router_cv = select_router(train, names, candidates, seed=snapshot.seed, progress=progress)
    timings["router_s"] = time.perf_counter() - mark

    mark = time.perf_counter()
    heldout: dict[str, Any] = {}
    if test_ids:
        progress.stage("held-out evaluation")
        compare = {name: spec.configured(k=snapshot.k, method=snapshot.method) for name, spec in COMPARED.items()}
        result = run_protocol(train, test, names, seed=snapshot.seed, candidates=[chosen], compare=compare,
                              clusterings=clusterings)
        heldout = {"test_queries": len(test_ids), "router": chosen.label, "methods": {
            name: {"per_dataset": r.per_dataset, "in_distribution": r.in_distribution,
                   "out_of_distribution": r.out_of_distribution} for name, r in result.reports.items()}}
    timings["heldout_s"] = time.perf_counter() - mark

    mark = time.perf_counter()
    progress.stage("layout")
    points = project_2d(train.embeddings)
    centre_points = project_2d(clustering.centroids, fit_on=train.embeddings)
    order = order_clusters(clustering.centroids)
    timings["layout_s"] = time.perf_counter() - mark

    mark = time.perf_counter()
    progress.stage("saving")
    _save(snapshot, pool, train_ids, train.datasets, labels, clustering, profiles, points, centre_points, order)
    timings["saving_s"] = time.perf_counter() - mark
    timings["total_s"] = time.perf_counter() - started
    RouterSnapshot.objects.filter(pk=snapshot.pk).update(
        status=RouterSnapshot.Status.DONE, stage="", finished_at=timezone.now(), shrinkage=shrinkage,
        shrinkage_cv=cv, team=team, rank_scores={n: float(s) for n, s in zip(names, scores)},
        first_places=first_places(profiles), heldout=heldout, n_train=len(train_ids), n_test=len(test_ids),
        router_chosen=chosen.jsonable(),
        # A list, not an object: PostgreSQL's jsonb does not keep the order the candidates were tried in.
        router_cv=[{"label": label, "folds": [round(v, 3) for v in values]} for label, values in router_cv.items()],
        timings={k: round(v, 3) for k, v in timings.items()},
        message=f"{len(train_ids)} train queries in {clustering.k} clusters; {len(names)} models profiled; "
                f"routes with {chosen.label}",
    )
    return "built"


class _LazyEmbedder:
    """Load the embedder only when something is missing: a snapshot over embedded queries needs no model."""

    def __init__(self, factory: EmbedderFactory, name: str) -> None:
        self.factory, self.name = factory, name
        self._embedder: Embedder | None = None

    def embed(self, texts: Sequence[str], **options: Any) -> NDArray[np.float32]:
        if self._embedder is None:
            self._embedder = self.factory(self.name)
        return self._embedder.embed(texts, **options)


def _clusters(snapshot: RouterSnapshot, train: Split, train_ids: Sequence[int],
              config: RouterConfig) -> tuple[Clustering, NDArray[np.intp]]:
    """Fit the clusters, or for a new model take the parent's as they are (same centroids, same assignment)."""
    parent = snapshot.parent
    if snapshot.kind == RouterSnapshot.Kind.ADD_MODEL and parent is not None:
        rows = list(parent.clusters.order_by("index").values_list("centroid", flat=True))
        centroids = np.asarray(rows, dtype=np.float32)
        clustering = Clustering(method=parent.method, k=len(centroids), seed=parent.seed, centroids=centroids)
        stored = dict(parent.assignments.values_list("query_id", "cluster"))
        if set(stored) == set(train_ids):
            return clustering, np.asarray([stored[q] for q in train_ids], dtype=np.intp)
        # Train queries added to the datasets since the parent: they join their nearest cluster.
        return clustering, clustering.assign(train.embeddings)
    clustering = fit_clusters(train.embeddings, k=config.k, method=config.method, seed=config.seed)
    return clustering, clustering.assign(train.embeddings)


def _save(snapshot: RouterSnapshot, pool: Sequence[LanguageModel], train_ids: Sequence[int],
          datasets: NDArray[np.str_], labels: NDArray[np.intp], clustering: Clustering, profiles: Any,
          points: NDArray[np.float64], centre_points: NDArray[np.float64], order: Sequence[int]) -> None:
    position = {c: i for i, c in enumerate(order)}
    with transaction.atomic():
        # A rebuilt snapshot (a retried task) replaces what an earlier attempt may have written.
        snapshot.clusters.all().delete()
        snapshot.assignments.all().delete()
        snapshot.profiles.all().delete()
        SnapshotCluster.objects.bulk_create([
            SnapshotCluster(
                snapshot=snapshot, index=c, centroid=clustering.centroids[c], dimensions=clustering.centroids.shape[1],
                size=int(profiles.sizes[c]), order=position[c], x=float(centre_points[c, 0]),
                y=float(centre_points[c, 1]),
                datasets=dict(Counter(datasets[labels == c].tolist()).most_common()),
            )
            for c in range(clustering.k)
        ], batch_size=500)
        SnapshotQuery.objects.bulk_create([
            SnapshotQuery(snapshot=snapshot, query_id=q, cluster=int(c), x=float(p[0]), y=float(p[1]))
            for q, c, p in zip(train_ids, labels, points)
        ], batch_size=5000)
        SnapshotProfile.objects.bulk_create([
            SnapshotProfile(
                snapshot=snapshot, model=model, cluster=c, n=int(profiles.counts[c, j]),
                mean=None if np.isnan(profiles.means[c, j]) else float(profiles.means[c, j]),
                estimate=None if np.isnan(profiles.estimates[c, j]) else float(profiles.estimates[c, j]),
                rank=int(profiles.ranks[c, j]),
            )
            for c in range(clustering.k) for j, model in enumerate(pool)
        ], batch_size=5000)
