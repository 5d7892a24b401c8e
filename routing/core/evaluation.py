"""Offline evaluation of routers on stored scores: the paper's protocol, without generation.

Each test query is "answered" by the score its chosen model already has. A router may pick a model that
was not evaluated on that query; the next model in its order that was evaluated stands in (an offline
artefact: a platform only routes to evaluated models). With ``top_n`` > 1 the query's score is the mean
of the first ``top_n`` evaluated models in routing order.

Baselines: ``best_single`` is the model with the best mean over train queries; ``best_per_dataset`` the
best train model of each dataset (the best single model where a dataset has no train queries);
``random`` the expected score of a uniform choice among the evaluated models; ``oracle`` the best
evaluated model of each query. Accuracies are percentages: the mean score of a dataset's test queries,
and the unweighted mean over in-distribution datasets (those with train queries) and over
out-of-distribution ones (test only).
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from routing.core.clustering import fit_clusters
from routing.core.profiles import build_profiles, nan_mean
from routing.core.router import ClusterRouter, KnnRouter, Router, SoftClusterRouter, rank_models

METHODS = ("avengers", "avengers_soft", "knn", "best_single", "best_per_dataset", "random", "oracle")
SHRINKAGE_GRID = (0.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0)


@dataclass(frozen=True)
class Split:
    embeddings: NDArray[np.float32]  # (n, dim)
    scores: NDArray[np.float64]  # (n, models), NaN where a model was not evaluated
    datasets: NDArray[np.str_]  # (n,)

    def take(self, index: NDArray[np.intp]) -> Split:
        return Split(self.embeddings[index], self.scores[index], self.datasets[index])


@dataclass(frozen=True)
class RouterConfig:
    k: int = 64
    seed: int = 42
    method: str = "kmeans"
    shrinkage: float = 0.0
    neighbours: int = 1  # clusters whose pooled scores form the shrinkage prior (1: the model's overall mean)
    top_n: int = 1
    soft_neighbours: int = 3
    soft_temperature: float = 0.05
    knn_k: int = 20


@dataclass
class Report:
    per_dataset: dict[str, float]
    in_distribution: float | None
    out_of_distribution: float | None


def realised_scores(order: NDArray[np.intp], scores: NDArray[np.float64], top_n: int = 1) -> NDArray[np.float64]:
    """Score of each query under a model order: mean of its first ``top_n`` evaluated models."""
    ordered = np.take_along_axis(scores, order, axis=1)
    present = ~np.isnan(ordered)
    taken = np.cumsum(present, axis=1) <= top_n
    use = present & taken
    total = np.where(use, ordered, 0.0).sum(axis=1)
    count = use.sum(axis=1)
    return np.divide(total, count, out=np.full(total.shape, np.nan), where=count > 0)


def route_scores(router: Router, split: Split, top_n: int = 1) -> NDArray[np.float64]:
    return realised_scores(rank_models(router.model_scores(split.embeddings), router.overall), split.scores, top_n)


def summarise(values: NDArray[np.float64], datasets: NDArray[np.str_], in_distribution: set[str]) -> Report:
    per_dataset = {}
    for name in sorted(set(datasets.tolist())):
        chosen = values[datasets == name]
        chosen = chosen[~np.isnan(chosen)]
        if chosen.size:
            per_dataset[name] = float(100 * chosen.mean())
    ind = [v for k, v in per_dataset.items() if k in in_distribution]
    ood = [v for k, v in per_dataset.items() if k not in in_distribution]
    return Report(per_dataset, float(np.mean(ind)) if ind else None, float(np.mean(ood)) if ood else None)


def fit_cluster_router(train: Split, models: Sequence[str], config: RouterConfig) -> ClusterRouter:
    clustering = fit_clusters(train.embeddings, k=config.k, method=config.method, seed=config.seed)
    profiles = build_profiles(clustering.assign(train.embeddings), train.scores, k=clustering.k, models=models,
                              shrinkage=config.shrinkage, centroids=clustering.centroids, neighbours=config.neighbours)
    return ClusterRouter(clustering, profiles)


def baseline_scores(train: Split, test: Split) -> dict[str, NDArray[np.float64]]:
    overall = nan_mean(train.scores, axis=0)
    m = train.scores.shape[1]
    single_order = rank_models(np.broadcast_to(overall, (len(test.datasets), m)).copy(), overall)
    per_dataset_order = single_order.copy()
    for name in set(test.datasets.tolist()):
        rows = train.datasets == name
        if rows.any():
            means = nan_mean(train.scores[rows], axis=0)
            target = test.datasets == name
            per_dataset_order[target] = rank_models(np.broadcast_to(means, (int(target.sum()), m)).copy(), overall)
    return {
        "best_single": realised_scores(single_order, test.scores),
        "best_per_dataset": realised_scores(per_dataset_order, test.scores),
        "random": nan_mean(test.scores, axis=1),
        "oracle": np.nanmax(np.where(np.isnan(test.scores), -np.inf, test.scores), axis=1),
    }


def evaluate(train: Split, test: Split, models: Sequence[str], config: RouterConfig,
             timings: dict[str, float] | None = None) -> dict[str, Report]:
    """Run every method of METHODS on the test split; return a Report per method."""
    import time

    started = time.perf_counter()
    router = fit_cluster_router(train, models, config)
    clustered = time.perf_counter()
    soft = SoftClusterRouter(router.clustering, router.profiles, config.soft_neighbours, config.soft_temperature)
    knn = KnnRouter.fit(train.embeddings, train.scores, tuple(models), k=config.knn_k)
    values = {
        "avengers": route_scores(router, test, config.top_n),
        "avengers_soft": route_scores(soft, test, config.top_n),
        "knn": route_scores(knn, test, config.top_n),
        **baseline_scores(train, test),
    }
    if timings is not None:
        timings["clustering_s"] = clustered - started
        timings["routing_s"] = time.perf_counter() - clustered
    in_distribution = set(train.datasets.tolist())
    return {name: summarise(values[name], test.datasets, in_distribution) for name in METHODS}


def folds_by_dataset(datasets: NDArray[np.str_], folds: int, seed: int) -> NDArray[np.intp]:
    """Assign each query a fold so that every dataset is spread evenly over the folds."""
    rng = np.random.default_rng(seed)
    fold = np.empty(len(datasets), dtype=np.intp)
    for name in sorted(set(datasets.tolist())):
        rows = np.flatnonzero(datasets == name)
        fold[rng.permutation(rows)] = np.arange(len(rows)) % folds
    return fold


def cross_validate(
    train: Split, models: Sequence[str], config: RouterConfig, *, grid: Sequence[float] = SHRINKAGE_GRID,
    folds: int = 5, progress: Callable[[int, int], None] | None = None,
) -> dict[float, list[float]]:
    """In-distribution accuracy of the cluster router in each fold, for each shrinkage, on train only."""
    fold = folds_by_dataset(train.datasets, folds, config.seed)
    results: dict[float, list[float]] = {s: [] for s in grid}
    for f in range(folds):
        inner, held = train.take(np.flatnonzero(fold != f)), train.take(np.flatnonzero(fold == f))
        clustering = fit_clusters(inner.embeddings, k=config.k, method=config.method, seed=config.seed)
        labels = clustering.assign(inner.embeddings)
        for s in grid:
            profiles = build_profiles(labels, inner.scores, k=clustering.k, models=models, shrinkage=s,
                                      centroids=clustering.centroids, neighbours=config.neighbours)
            report = summarise(route_scores(ClusterRouter(clustering, profiles), held), held.datasets,
                               set(inner.datasets.tolist()))
            results[s].append(report.in_distribution or 0.0)
        if progress is not None:
            progress(f + 1, folds)
    return results


def choose_shrinkage(cv: dict[float, list[float]]) -> float:
    """Apply the one-standard-error rule: the largest shrinkage whose CV mean is within one SE of the best.

    Shrinkage is the regulariser, so among settings that CV cannot tell apart from the best we take
    the most regularised (Hastie, Tibshirani and Friedman, ESL section 7.10). The SE is the spread of
    the best setting's fold accuracies divided by the square root of the number of folds.
    """
    means = {s: float(np.mean(v)) for s, v in cv.items()}
    best = max(means, key=lambda s: (means[s], -s))
    values = np.asarray(cv[best], dtype=np.float64)
    se = float(values.std(ddof=1) / np.sqrt(len(values))) if len(values) > 1 else 0.0
    return max(s for s, m in means.items() if m >= means[best] - se)
