"""Build a router snapshot: embed, read the scores, cluster, profile, choose the router, evaluate, save.

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
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import numpy as np
from django.db import transaction
from django.db.models import Avg
from django.utils import timezone
from numpy.typing import NDArray

from evaluation.models import Dataset, LanguageModel, ModelResponse, Query
from routing.core.clustering import Clustering, fit_clusters
from routing.core.embedding import Embedder
from routing.core.heldout import (
    COMPARED,
    RouterConfig,
    RouterSpec,
    Split,
    choose_shrinkage,
    cross_validate,
    router_candidates,
    run_protocol,
    select_router,
)
from routing.core.layout import order_clusters, project_2d
from routing.core.profiles import build_profiles, first_places, rank_scores, select_models
from routing.core.router import Clusterings, Router, fit_router
from routing.embedding_jobs import EmbedderFactory, default_embedder, embed_missing, embeddings_of
from routing.models import RouterSnapshot, SnapshotCluster, SnapshotProfile, SnapshotQuery

logger = logging.getLogger(__name__)


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
