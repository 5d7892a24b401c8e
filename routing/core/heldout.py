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

The protocol (``run_protocol``): choose the router by 5-fold CV on the train lines among candidates
(``select_router``: the one-standard-error rule over ``DEFAULT_CANDIDATES`` for the default), fit it and the
compared routers on train, score them and the baselines on test. The offline evaluator runs it once per seed,
and a snapshot's build runs it on its datasets' splits, so that what is measured offline is what is served.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray

from routing.core.clustering import fit_clusters
from routing.core.profiles import build_profiles, nan_mean
from routing.core.router import (
    Clusterings,
    ClusterRouter,
    Router,
    TrainData,
    fit_router,
    get_router,
    rank_models,
)

BASELINES = ("best_single", "best_per_dataset", "random", "oracle")
SHRINKAGE_GRID = (0.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0)
SEEDS = (42, 999, 2024, 2025, 3407)  # the paper's five


@dataclass(frozen=True)
class Split(TrainData):
    def take(self, index: NDArray[np.intp]) -> Split:
        return Split(self.embeddings[index], self.scores[index], self.datasets[index])


@dataclass(frozen=True)
class RouterSpec:
    """A registered router and the parameters that differ from its defaults."""

    name: str
    params: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        get_router(self.name).resolve(self.params)  # an unknown router or parameter fails here, not mid-run

    @property
    def label(self) -> str:
        """The name, the shrinkage and the parameters that differ from the defaults, e.g.
        ``dataset(shrinkage=inf)`` or ``dataset(k=16, shrinkage=8)``: never the seed, and not the clustering's
        parameters where the router does not cluster."""
        definition = get_router(self.name)
        resolved = self.resolved()
        clusters = definition.uses_clusters(resolved)
        shown = {k: v for k, v in resolved.items()
                 if k != "seed" and (clusters or k not in ("k", "method"))
                 and (k == "shrinkage" or v != definition.parameters[k])}
        inner = ", ".join(f"{k}={_text(v)}" for k, v in sorted(shown.items()))
        return f"{self.name}({inner})" if inner else self.name

    def resolved(self) -> dict[str, Any]:
        return get_router(self.name).resolve(self.params)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> RouterSpec:
        """Read what ``jsonable`` wrote ("inf" back to infinity where the parameter is a number)."""
        definition = get_router(str(data["router"]))
        params = {}
        for key, value in dict(data.get("params") or {}).items():
            default = definition.parameters.get(key)
            params[key] = math.inf if value == "inf" and isinstance(default, float) else value
        return cls(definition.name, params)

    def jsonable(self) -> dict[str, Any]:
        return {"router": self.name, "params": json_params(self.resolved()), "label": self.label}

    def configured(self, **values: Any) -> RouterSpec:
        """This spec with ``values`` (e.g. k, method) set where the router takes them and the spec does not."""
        own = get_router(self.name).parameters
        return RouterSpec(self.name, {**{k: v for k, v in values.items() if k in own}, **self.params})


def _text(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)  # infinity reads "inf"


def json_params(params: Mapping[str, Any]) -> dict[str, Any]:
    """Router parameters as JSON can hold them: JSON has no infinity, so it is written as the string "inf"
    (``RouterSpec.from_json`` reads it back)."""
    return {k: "inf" if isinstance(v, float) and math.isinf(v) else v for k, v in params.items()}


# The candidates the default router is chosen from, most regularised first: the per-dataset means alone
# (K plays no part), the same refined by clusters within datasets with less and less shrinkage, and the
# paper's plain per-cluster means. ``choose_router`` prefers the earliest that CV cannot tell from the best.
DEFAULT_CANDIDATES: tuple[RouterSpec, ...] = (
    RouterSpec("dataset", {"shrinkage": math.inf}),
    RouterSpec("dataset", {"shrinkage": 64.0}),
    RouterSpec("dataset", {"shrinkage": 16.0}),
    RouterSpec("dataset", {"shrinkage": 4.0}),
    RouterSpec("cluster", {"shrinkage": 0.0}),
)


@dataclass(frozen=True)
class RouterConfig:
    k: int = 64
    seed: int = 42
    method: str = "kmeans"
    shrinkage: float = 0.0
    neighbours: int = 1  # clusters whose pooled scores form the shrinkage prior (1: the model's overall mean)


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
    realised: NDArray[np.float64] = np.divide(total, count, out=np.full(total.shape, np.nan), where=count > 0)
    return realised


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


# --- choosing the default router by cross-validation on train, and the protocol over seeds ----------------


# Columns scored beside the chosen router, offline and in a snapshot's held-out results.
COMPARED: dict[str, RouterSpec] = {"paper": RouterSpec("cluster"), "soft": RouterSpec("soft"),
                                   "knn": RouterSpec("knn")}


def router_candidates(router: str, params: Mapping[str, Any] | None = None, **clustering: Any) -> list[RouterSpec]:
    """What a run chooses from: the default candidates for ``auto``, else the one named router with ``params``;
    ``clustering`` (k, method) is applied where a candidate clusters. Raises ValueError naming what is wrong."""
    if router == "auto":
        if params:
            raise ValueError("parameters need a named router; the default router's candidates are fixed")
        return [c.configured(**clustering) for c in DEFAULT_CANDIDATES]
    return [RouterSpec(router, dict(params or {})).configured(**clustering)]


def cross_validate_routers(
    train: Split, models: Sequence[str], candidates: Sequence[RouterSpec], *, folds: int = 5, seed: int = 42,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, list[float]]:
    """In-distribution accuracy of each candidate in each of ``folds`` folds of train (stratified by dataset).

    Only train lines are read: the test split never reaches this function.
    """
    if len({c.label for c in candidates}) != len(candidates):
        raise ValueError("every candidate needs its own label: " + ", ".join(c.label for c in candidates))
    if folds < 2:
        raise ValueError("cross-validation needs at least 2 folds")
    fold = folds_by_dataset(train.datasets, folds, seed)
    results: dict[str, list[float]] = {c.label: [] for c in candidates}
    for f in range(folds):
        inner, held = train.take(np.flatnonzero(fold != f)), train.take(np.flatnonzero(fold == f))
        clusterings = Clusterings(inner.embeddings)
        seen = set(inner.datasets.tolist())
        for candidate in candidates:
            router = fit_router(candidate.name, inner, models, candidate.params, clusterings)
            results[candidate.label].append(summarise(route_scores(router, held), held.datasets, seen).in_distribution
                                            or 0.0)
        if progress is not None:
            progress(f + 1, folds)
    return results


def choose_router(candidates: Sequence[RouterSpec], cv: Mapping[str, Sequence[float]]) -> RouterSpec:
    """The one-standard-error rule over candidates listed most regularised first.

    The best CV mean sets the bar (its mean minus the standard error of its fold accuracies); the first
    candidate whose CV mean clears it is chosen, so that a more complex router must beat a simpler one by
    more than CV's noise to be picked.
    """
    means = {c.label: float(np.mean(cv[c.label])) for c in candidates}
    best = max(candidates, key=lambda c: means[c.label])
    values = np.asarray(cv[best.label], dtype=np.float64)
    se = float(values.std(ddof=1) / np.sqrt(len(values))) if len(values) > 1 else 0.0
    return next(c for c in candidates if means[c.label] >= means[best.label] - se)


def select_router(
    train: Split, models: Sequence[str], candidates: Sequence[RouterSpec], *, seed: int, folds: int = 5,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[RouterSpec, dict[str, list[float]]]:
    """The router to use and its CV table: the only candidate as it is, else ``choose_router`` over CV on train.

    Each candidate gets ``seed`` as its clustering seed unless it names one; the folds are drawn with it too.
    """
    seeded = [RouterSpec(c.name, _with_seed(c, seed)) for c in candidates]
    if len(seeded) == 1:  # nothing to choose
        return seeded[0], {}
    cv = cross_validate_routers(train, models, seeded, folds=folds, seed=seed, progress=progress)
    return choose_router(seeded, cv), cv


@dataclass
class SeedResult:
    """One run of the protocol: the router chosen on train, its CV table, and every method's test report."""

    chosen: RouterSpec
    cv: dict[str, list[float]]
    routers: dict[str, Router]  # column -> the fitted router
    reports: dict[str, Report]  # column -> test report (routers and baselines)


def run_protocol(
    train: Split, test: Split, models: Sequence[str], *, seed: int,
    candidates: Sequence[RouterSpec] = DEFAULT_CANDIDATES, compare: Mapping[str, RouterSpec] | None = None,
    top_n: int = 1, folds: int = 5, progress: Callable[[int, int], None] | None = None,
    clusterings: Clusterings | None = None,
) -> SeedResult:
    """Choose the default router by CV on train, fit it and the routers of ``compare`` on train, test them all.

    ``avengers`` is the chosen router; ``compare`` adds columns (e.g. each candidate, the paper's recipe).
    Every router is fitted with ``seed`` as its clustering seed; ``clusterings`` may hold clusterings of train
    to use as they are (a snapshot that adds a model keeps its parent's clusters).
    """
    chosen, cv = select_router(train, models, candidates, seed=seed, folds=folds, progress=progress)
    columns = {"avengers": chosen, **{name: RouterSpec(spec.name, _with_seed(spec, seed))
                                      for name, spec in (compare or {}).items()}}
    clusterings = clusterings or Clusterings(train.embeddings)
    routers = {name: fit_router(spec.name, train, models, spec.params, clusterings) for name, spec in columns.items()}
    values = {name: route_scores(router, test, top_n) for name, router in routers.items()}
    values.update(baseline_scores(train, test))
    seen = set(train.datasets.tolist())
    return SeedResult(chosen, cv, routers, {name: summarise(v, test.datasets, seen) for name, v in values.items()})


def _with_seed(spec: RouterSpec, seed: int) -> dict[str, Any]:
    params = dict(spec.params)
    if "seed" in get_router(spec.name).parameters:
        params.setdefault("seed", seed)
    return params


def headline(reports: Mapping[str, Report], key: str = "in_distribution") -> dict[str, dict[str, float]]:
    """Per method: accuracy, ``imp_max`` (minus best_per_dataset), ``gap_closed`` (share of the best-single to
    oracle gap) and ``oracle_gap`` ((oracle - method) / oracle, as LLMRouterBench reports it)."""
    value = {name: getattr(r, key) for name, r in reports.items()}
    best, expert, oracle = value.get("best_single"), value.get("best_per_dataset"), value.get("oracle")
    out: dict[str, dict[str, float]] = {}
    for name, v in value.items():
        if v is None:
            continue
        row = {"accuracy": v}
        if expert is not None:
            row["imp_max"] = v - expert
        if best is not None and oracle is not None and oracle > best:
            row["gap_closed"] = (v - best) / (oracle - best)
        if oracle:
            row["oracle_gap"] = (oracle - v) / oracle
        out[name] = row
    return out


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
