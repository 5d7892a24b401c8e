"""Routers: given query embeddings, score every model and pick the best ones.

* ``ClusterRouter`` (the paper): the nearest cluster by cosine similarity, then that cluster's models by
  their profile estimate.
* ``SoftClusterRouter``: the ``neighbours`` nearest clusters, weighted by a softmax of their similarity
  (``temperature``), average the models' estimates.
* ``KnnRouter``: the ``k`` most similar train queries, weighted by similarity, average each model's
  scores where it was evaluated; the model's overall mean fills in where none of them has a score.
* ``DatasetRouter``: which datasets a query resembles (its ``neighbours`` nearest train queries vote for
  their datasets), then each model's score in those datasets, refined by the query's cluster within each
  dataset and shrunk toward the dataset's mean (``shrinkage`` pseudo-queries; ``inf``: the dataset means alone).

Registry. ``ROUTERS`` maps a name to its definition (label, parameters and their defaults, ``fit``); the
offline evaluator, a snapshot's build and the routing service look routers up there and nowhere else.

Ties. Every router orders models by (score desc, overall train mean desc, model index asc): the
overall mean breaks ties between equal cluster scores, and the fixed model order breaks the rest, so a
decision never depends on anything but the inputs.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
from numpy.typing import NDArray

from avengers_web.core.registry import Decorated, Registry
from routing.core.clustering import Clustering, normalise
from routing.core.profiles import TIE_TOLERANCE, Profiles, build_profiles, group_totals, nan_mean


class Router(Protocol):
    @property
    def models(self) -> tuple[str, ...]: ...

    @property
    def overall(self) -> NDArray[np.float64]: ...

    def model_scores(self, embeddings: NDArray[np.floating]) -> NDArray[np.float64]:
        """Return the (n, models) matrix of routing scores, higher is better."""
        ...


def _quantised(scores: NDArray[np.floating]) -> NDArray[np.float64]:
    """Scores on the tie grid: equal within TIE_TOLERANCE means equal; NaN (no estimate) becomes -inf."""
    scores = np.where(np.isnan(scores), -np.inf, np.asarray(scores, dtype=np.float64))
    finite = np.isfinite(scores)
    return np.where(finite, np.round(np.where(finite, scores, 0.0) / TIE_TOLERANCE), scores)


def rank_models(scores: NDArray[np.floating], overall: NDArray[np.floating],
                first: NDArray[np.bool_] | None = None) -> NDArray[np.intp]:
    """Order model indices per row; the one tie rule of every router, offline and live.

    Models in ``first`` (the snapshot's team, where one is given) come before the others; then score desc
    (scores equal within TIE_TOLERANCE tie), then overall train mean desc, then model index asc. A NaN score
    (no estimate) sorts last.
    """
    quantised = _quantised(scores)
    keys = RowRanker(overall, first)
    n, m = quantised.shape
    order = np.lexsort((np.broadcast_to(keys.index, (n, m)), np.broadcast_to(keys.overall, (n, m)), -quantised,
                        np.broadcast_to(keys.outside, (n, m))), axis=1)
    return np.asarray(order, dtype=np.intp)


class RowRanker:
    """``rank_models`` for one row at a time, with the fixed keys computed once (the routing service's path)."""

    def __init__(self, overall: NDArray[np.floating], first: NDArray[np.bool_] | None = None) -> None:
        m = len(overall)
        # The sort keys besides the score, least significant first: model index, then overall mean (desc),
        # and most significant, outside the team (team first).
        self.index = np.arange(m)
        self.overall = -np.nan_to_num(np.asarray(overall, dtype=np.float64), nan=-np.inf)
        self.outside = np.zeros(m, dtype=np.int8) if first is None else (~np.asarray(first)).astype(np.int8)

    def __call__(self, scores: NDArray[np.floating]) -> NDArray[np.intp]:
        return np.lexsort((self.index, self.overall, -_quantised(scores), self.outside)).astype(np.intp)


def choose(router: Router, embeddings: NDArray[np.floating], top_n: int = 1) -> NDArray[np.intp]:
    """Return the indices of the top-n models for each query, shape (n, top_n)."""
    if top_n < 1:
        raise ValueError("top_n must be at least 1")
    return rank_models(router.model_scores(embeddings), router.overall)[:, :top_n]


@dataclass(frozen=True)
class _ProfiledRouter:
    """A router over clusters and their capability profiles."""

    clustering: Clustering
    profiles: Profiles

    @property
    def models(self) -> tuple[str, ...]:
        return self.profiles.models

    @property
    def overall(self) -> NDArray[np.float64]:
        return self.profiles.overall


@dataclass(frozen=True)
class ClusterRouter(_ProfiledRouter):
    def model_scores(self, embeddings: NDArray[np.floating]) -> NDArray[np.float64]:
        return self.profiles.estimates[self.clustering.assign(embeddings)]


@dataclass(frozen=True)
class SoftClusterRouter(_ProfiledRouter):
    neighbours: int = 3
    temperature: float = 0.05

    def model_scores(self, embeddings: NDArray[np.floating]) -> NDArray[np.float64]:
        similarity = self.clustering.similarities(embeddings).astype(np.float64)
        width = min(self.neighbours, similarity.shape[1])
        nearest = np.argsort(-similarity, axis=1, kind="stable")[:, :width]
        top = np.take_along_axis(similarity, nearest, axis=1) / self.temperature
        weights = np.exp(top - top.max(axis=1, keepdims=True))
        weights /= weights.sum(axis=1, keepdims=True)
        estimates = self.profiles.estimates[nearest]  # (n, width, m)
        fallback = np.where(np.isnan(estimates), self.profiles.overall, estimates)
        scores: NDArray[np.float64] = np.einsum("nw,nwm->nm", weights, fallback)
        return scores


@dataclass(frozen=True)
class KnnRouter:
    embeddings: NDArray[np.float32]  # train embeddings, unit rows
    scores: NDArray[np.float64]  # (train, models) with NaN for missing
    models: tuple[str, ...]
    overall: NDArray[np.float64]
    k: int = 10

    @classmethod
    def fit(cls, embeddings: NDArray[np.floating], scores: NDArray[np.floating], models: tuple[str, ...],
            k: int = 10) -> KnnRouter:
        train_scores = np.asarray(scores, dtype=np.float64)
        return cls(normalise(embeddings), train_scores, models, nan_mean(train_scores, axis=0), k)

    def model_scores(self, embeddings: NDArray[np.floating]) -> NDArray[np.float64]:
        similarity = normalise(embeddings) @ self.embeddings.T
        width = min(self.k, similarity.shape[1])
        nearest = np.argsort(-similarity, axis=1, kind="stable")[:, :width]
        weights = np.clip(np.take_along_axis(similarity, nearest, axis=1), 1e-6, None).astype(np.float64)
        neighbour_scores = self.scores[nearest]  # (n, width, m)
        present = ~np.isnan(neighbour_scores)
        total = np.einsum("nw,nwm->nm", weights, np.where(present, neighbour_scores, 0.0))
        weight = np.einsum("nw,nwm->nm", weights, present.astype(np.float64))
        return np.where(weight > 0, total / np.where(weight > 0, weight, 1.0), self.overall)


@dataclass(frozen=True)
class DatasetRouter:
    """Route by the datasets a query resembles, refined by its cluster within each dataset.

    For a query q with nearest cluster c and dataset weights w(d | q) (its ``neighbours`` nearest train
    queries, after centring the embeddings on the train mean, each vote for their dataset with their cosine
    similarity), model m scores

        sum over d of w(d | q) * (sum of m's scores on d's train queries in c + s * mean[d, m]) / (count + s)

    With s = inf the clusters drop out of the estimate and the router is a soft per-dataset expert.

    The neighbour search is an inverted file over the clusters: it visits the train queries of the
    ``ceil(search_share * k)`` clusters nearest the query (1.0: every train query, an exact search), so that a
    query reads an eighth of the train vectors by default instead of all of them (docs/BENCHMARKS.md). Each
    query is scored on its own by one code path, offline and live, so both find the same neighbours.
    """

    models: tuple[str, ...]
    overall: NDArray[np.float64]  # (m,) mean over every scored train query of the model
    datasets: tuple[str, ...]  # (D,)
    centre: NDArray[np.float32]  # (dim,) mean of the train embeddings
    index: NDArray[np.float32]  # (n, dim) centred unit train embeddings, grouped by cluster
    index_datasets: NDArray[np.intp]  # (n,) dataset of each row of ``index``, into ``datasets``
    offsets: NDArray[np.intp]  # (k + 1,) rows of cluster c in ``index``: offsets[c]:offsets[c + 1]
    dataset_means: NDArray[np.float64]  # (D, m) each model's mean per dataset (its overall mean where unscored)
    estimates: NDArray[np.float64]  # (D, k, m) shrunk score per dataset and cluster; (D, 1, m) when s is inf
    clustering: Clustering
    shrinkage: float
    neighbours: int = 10
    search_share: float = 0.125

    @classmethod
    def fit(cls, embeddings: NDArray[np.floating], scores: NDArray[np.floating], datasets: Sequence[str],
            models: Sequence[str], *, clustering: Clustering, shrinkage: float, neighbours: int = 10,
            search_share: float = 0.125) -> DatasetRouter:
        x = normalise(embeddings)
        scores = np.asarray(scores, dtype=np.float64)
        if scores.shape != (x.shape[0], len(models)) or len(datasets) != x.shape[0]:
            raise ValueError("embeddings, scores and datasets must describe the same train queries")
        if shrinkage < 0 or neighbours < 1 or not 0 < search_share <= 1:
            raise ValueError("shrinkage must be >= 0, neighbours >= 1 and search_share in (0, 1]")
        names = tuple(sorted(set(datasets)))
        which = np.searchsorted(np.asarray(names), np.asarray(datasets)).astype(np.intp)
        overall = nan_mean(scores, axis=0)
        sums, counts = group_totals(which, len(names), scores)
        means = np.divide(sums, counts, out=np.broadcast_to(overall, sums.shape).copy(), where=counts > 0)
        means = np.where(np.isnan(means), np.nan_to_num(overall, nan=0.0), means)
        labels = clustering.assign(x)
        k = clustering.k
        if math.isinf(shrinkage):
            estimates = means[:, None, :].copy()
        else:
            cell_sums, cell_counts = group_totals(which * k + labels, len(names) * k, scores)
            cell_sums, cell_counts = cell_sums.reshape(len(names), k, -1), cell_counts.reshape(len(names), k, -1)
            estimates = (cell_sums + shrinkage * means[:, None, :]) / (cell_counts + shrinkage) if shrinkage > 0 \
                else np.divide(cell_sums, cell_counts, out=np.broadcast_to(means[:, None, :], cell_sums.shape).copy(),
                               where=cell_counts > 0)
        centre = x.mean(axis=0)
        order = np.argsort(labels, kind="stable")
        offsets = np.concatenate([[0], np.cumsum(np.bincount(labels, minlength=k))]).astype(np.intp)
        return cls(models=tuple(models), overall=overall, datasets=names, centre=centre,
                   index=np.ascontiguousarray(normalise(x - centre)[order]), index_datasets=which[order],
                   offsets=offsets, dataset_means=means, estimates=estimates, clustering=clustering,
                   shrinkage=float(shrinkage), neighbours=int(neighbours), search_share=float(search_share))

    @property
    def probes(self) -> int:
        """How many of the nearest clusters the neighbour search visits."""
        return max(1, min(self.clustering.k, math.ceil(self.search_share * self.clustering.k)))

    def _one(self, vector: NDArray[np.float32]) -> tuple[NDArray[np.float64], int]:
        """Dataset weights w(d | q) of one unit query vector, and its nearest cluster."""
        to_centroids = self.clustering.centroids @ vector
        # The nearest clusters, nearest first (ties: the lower index), as Clustering.assign picks the first.
        probed = np.lexsort((np.arange(to_centroids.shape[0]), -to_centroids))[: self.probes]
        centred = normalise(vector - self.centre)
        rows = [np.arange(self.offsets[c], self.offsets[c + 1]) for c in probed]
        similarity = np.concatenate([self.index[self.offsets[c]:self.offsets[c + 1]] @ centred for c in probed])
        rows_all = np.concatenate(rows)
        width = min(self.neighbours, similarity.shape[0])
        top = np.lexsort((rows_all, -similarity))[:width]  # most similar first; ties: the lower row
        votes = np.clip(similarity[top], 1e-6, None).astype(np.float64)
        weights = np.bincount(self.index_datasets[rows_all[top]], weights=votes, minlength=len(self.datasets))
        return weights / weights.sum(), int(probed[0])

    def dataset_weights(self, embeddings: NDArray[np.floating]) -> NDArray[np.float64]:
        """Return w(d | q), shape (n, datasets): the similarity-weighted vote of the nearest train queries."""
        return np.stack([self._one(v)[0] for v in normalise(embeddings)])

    def model_scores(self, embeddings: NDArray[np.floating]) -> NDArray[np.float64]:
        out = np.empty((len(embeddings), len(self.models)))
        refine = self.estimates.shape[1] > 1
        for i, vector in enumerate(normalise(embeddings)):
            weights, cluster = self._one(vector)
            out[i] = weights @ self.estimates[:, cluster if refine else 0, :]
        return out


# --- the registry ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TrainData:
    """What every router is fitted on: the train queries' embeddings, scores and datasets."""

    embeddings: NDArray[np.float32]  # (n, dim)
    scores: NDArray[np.float64]  # (n, models), NaN where a model was not evaluated
    datasets: NDArray[np.str_]  # (n,)


Fit = Callable[..., Router]


@dataclass(frozen=True)
class RouterDefinition:
    name: str
    label: str
    parameters: Mapping[str, Any]  # name -> default
    fit: Fit  # fit(train, models, clusterings, **parameters) -> Router
    uses_clusters: Callable[[Mapping[str, Any]], bool] = field(default=lambda params: True)
    at_most: Mapping[str, float] = field(default_factory=dict)  # upper bounds of numeric parameters

    def resolve(self, params: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """The definition's defaults overridden by ``params``; unknown names and bad values are refused.

        A parameter whose default is an int takes an int >= 1 (a count); a float takes a number >= 0 (infinity
        included); ``method`` a registered clustering method."""
        params = dict(params or {})
        unknown = sorted(set(params) - set(self.parameters))
        if unknown:
            raise ValueError(f"router {self.name!r} has no parameter {', '.join(unknown)}; "
                             f"it takes {', '.join(sorted(self.parameters))}")
        for key, value in params.items():
            default = self.parameters[key]
            if isinstance(default, bool) or isinstance(value, bool):
                ok = isinstance(default, bool) and isinstance(value, bool)
            elif isinstance(default, int):
                ok = isinstance(value, int) and value >= (0 if key == "seed" else 1)
            elif isinstance(default, float):
                ok = isinstance(value, (int, float)) and not math.isnan(value) and value >= 0
            else:
                ok = isinstance(value, str)
            if key == "method":
                from routing.core.clustering import CLUSTERING_METHODS

                ok = ok and value in CLUSTERING_METHODS
            if key in self.at_most:
                ok = ok and 0 < value <= self.at_most[key]
            if not ok:
                kind = {int: "a whole number >= 1", float: "a number >= 0 (or inf)"}.get(type(default), "text")
                if key in self.at_most:
                    kind = f"a number above 0 and at most {self.at_most[key]:g}"
                if key == "method":
                    from routing.core.clustering import CLUSTERING_METHODS

                    kind = "one of " + ", ".join(sorted(CLUSTERING_METHODS))
                raise ValueError(f"{key} must be {kind}, got {value!r}")
        return {**self.parameters, **{k: float(v) if isinstance(self.parameters[k], float) else v
                                      for k, v in params.items()}}


ROUTERS: Registry[RouterDefinition] = Registry("router")


class Clusterings:
    """Fitted clusterings of one train set by (method, k, seed), so that routers fitted together share them."""

    def __init__(self, embeddings: NDArray[np.floating]) -> None:
        self.embeddings = embeddings
        self._fitted: dict[tuple[str, int, int], Clustering] = {}

    def put(self, clustering: Clustering) -> None:
        """Use this clustering for its (method, k, seed): a snapshot's stored clusters, or a parent's."""
        self._fitted[(clustering.method, int(clustering.k), int(clustering.seed))] = clustering

    def get(self, method: str, k: int, seed: int) -> Clustering:
        from routing.core.clustering import fit_clusters

        key = (method, int(k), int(seed))
        if key not in self._fitted:
            self._fitted[key] = fit_clusters(self.embeddings, k=int(k), method=method, seed=int(seed))
        return self._fitted[key]


def register_router(name: str, label: str, *, uses_clusters: Callable[[Mapping[str, Any]], bool] | None = None,
                    at_most: Mapping[str, float] | None = None,
                    **parameters: Any) -> Callable[[Decorated], Decorated]:
    """Register the decorated fit function in ``ROUTERS``; ``parameters`` are its keyword arguments' defaults."""
    return ROUTERS.registering(name, lambda fit: RouterDefinition(
        name, label, dict(parameters), fit, uses_clusters or (lambda params: True), dict(at_most or {})))


def get_router(name: str) -> RouterDefinition:
    return ROUTERS.find(name)


def fit_router(name: str, train: TrainData, models: Sequence[str], params: Mapping[str, Any] | None = None,
               clusterings: Clusterings | None = None) -> Router:
    """Fit the named router with its defaults overridden by ``params``."""
    definition = get_router(name)
    return definition.fit(train, tuple(models), clusterings or Clusterings(train.embeddings),
                          **definition.resolve(params))


_CLUSTERED: dict[str, Any] = {"k": 64, "method": "kmeans", "seed": 42}


@register_router("cluster", "nearest cluster, its models by shrunk profile (the paper)", shrinkage=0.0,
                 neighbours=1, **_CLUSTERED)
def _fit_cluster(train: TrainData, models: tuple[str, ...], clusterings: Clusterings, *, k: int, method: str,
                 seed: int, shrinkage: float, neighbours: int) -> ClusterRouter:
    clustering = clusterings.get(method, k, seed)
    profiles = build_profiles(clustering.assign(train.embeddings), train.scores, k=clustering.k, models=models,
                              shrinkage=shrinkage, centroids=clustering.centroids, neighbours=neighbours)
    return ClusterRouter(clustering, profiles)


@register_router("soft", "nearest clusters weighted by similarity", shrinkage=0.0, soft_neighbours=3,
                 temperature=0.05, **_CLUSTERED)
def _fit_soft(train: TrainData, models: tuple[str, ...], clusterings: Clusterings, *, k: int, method: str,
              seed: int, shrinkage: float, soft_neighbours: int, temperature: float) -> SoftClusterRouter:
    hard = _fit_cluster(train, models, clusterings, k=k, method=method, seed=seed, shrinkage=shrinkage, neighbours=1)
    return SoftClusterRouter(hard.clustering, hard.profiles, soft_neighbours, temperature)


@register_router("knn", "nearest train queries", uses_clusters=lambda params: False, knn_k=20)
def _fit_knn(train: TrainData, models: tuple[str, ...], clusterings: Clusterings, *, knn_k: int) -> KnnRouter:
    return KnnRouter.fit(train.embeddings, train.scores, models, k=knn_k)


@register_router("dataset", "the datasets a query resembles, refined by its cluster in each",
                 at_most={"search_share": 1.0}, shrinkage=math.inf, neighbours=10, search_share=0.125, **_CLUSTERED)
def _fit_dataset(train: TrainData, models: tuple[str, ...], clusterings: Clusterings, *, k: int, method: str,
                 seed: int, shrinkage: float, neighbours: int, search_share: float) -> DatasetRouter:
    return DatasetRouter.fit(train.embeddings, train.scores, train.datasets.tolist(), models,
                             clustering=clusterings.get(method, k, seed), shrinkage=float(shrinkage),
                             neighbours=neighbours, search_share=search_share)
