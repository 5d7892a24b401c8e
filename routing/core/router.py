"""Routers: given query embeddings, score every model and pick the best ones.

* ``ClusterRouter`` (the paper): the nearest cluster by cosine similarity, then that cluster's models by
  their profile estimate.
* ``SoftClusterRouter``: the ``neighbours`` nearest clusters, weighted by a softmax of their similarity
  (``temperature``), average the models' estimates.
* ``KnnRouter``: the ``k`` most similar train queries, weighted by similarity, average each model's
  scores where it was evaluated; the model's overall mean fills in where none of them has a score.

Ties. Every router orders models by (score desc, overall train mean desc, model index asc): the
overall mean breaks ties between equal cluster scores, and the fixed model order breaks the rest, so a
decision never depends on anything but the inputs.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np
from numpy.typing import NDArray

from routing.core.clustering import Clustering, normalise
from routing.core.profiles import TIE_TOLERANCE, Profiles


class Router(Protocol):
    models: tuple[str, ...]
    overall: NDArray[np.float64]

    def model_scores(self, embeddings: NDArray[np.floating]) -> NDArray[np.float64]:
        """Return the (n, models) matrix of routing scores, higher is better."""
        ...


def rank_models(scores: NDArray[np.floating], overall: NDArray[np.floating]) -> NDArray[np.intp]:
    """Order model indices per row: score desc, then overall desc, then index asc."""
    scores = np.where(np.isnan(scores), -np.inf, np.asarray(scores, dtype=np.float64))
    # Quantise so that scores equal within the tolerance tie exactly, then let lexsort break ties.
    finite = np.isfinite(scores)
    quantised = np.where(finite, np.round(np.where(finite, scores, 0.0) / TIE_TOLERANCE), scores)
    overall_key = np.nan_to_num(np.asarray(overall, dtype=np.float64), nan=-np.inf)
    n, m = scores.shape
    index = np.broadcast_to(np.arange(m), (n, m))
    order = np.lexsort((index, -np.broadcast_to(overall_key, (n, m)), -quantised), axis=1)
    return np.asarray(order, dtype=np.intp)


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
        return np.einsum("nw,nwm->nm", weights, fallback)


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
        from routing.core.profiles import nan_mean

        scores = np.asarray(scores, dtype=np.float64)
        return cls(normalise(embeddings), scores, models, nan_mean(scores, axis=0), k)

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
