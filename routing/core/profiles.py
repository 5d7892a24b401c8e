"""Capability profiles: each model's score per cluster, its rank there, and the paper's rank score.

Robust estimate. A cluster that holds five queries of a dataset gives a plain mean that is mostly noise,
and at large K most clusters are that small. Each model's score in a cluster is therefore shrunk toward
its score in the neighbourhood of the cluster, in proportion to how few scored queries the cluster has:

    estimate[c, m] = (sum of scores[c, m] + s * prior[c, m]) / (count[c, m] + s)

``s`` (the shrinkage, in pseudo-queries) is the one extra parameter; the offline evaluator chooses it by
cross-validation on the train split. ``prior[c, m]`` is the model's mean over the queries of the
``neighbours`` clusters most similar to c (by centroid cosine; c itself included), which in turn falls back on
the model's overall mean. With s = 0 this is the paper's plain per-cluster mean.

Ranks. Within a cluster, models are ranked by estimate, best first, with competition ranking: models
whose estimates are equal (within 1e-9) share the better rank, and the next rank skips ("1, 2, 2, 4").
A model never scored in the cluster and with no prior is ranked last. The rank score is the paper's
s(m) = sum over clusters of 1 / rank(m, c), over the clusters that hold at least one train query.
Selecting the top M models sorts by rank score, then overall mean, then name, so it is deterministic.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

TIE_TOLERANCE = 1e-9


@dataclass(frozen=True)
class Profiles:
    models: tuple[str, ...]
    counts: NDArray[np.int64]  # (k, m): scored train queries of model m in cluster c
    means: NDArray[np.float64]  # (k, m): plain mean score; NaN where count is 0
    estimates: NDArray[np.float64]  # (k, m): the robust estimate used for ranking and routing
    ranks: NDArray[np.int64]  # (k, m): 1 = best in the cluster
    overall: NDArray[np.float64]  # (m,): mean over every scored train query of the model
    sizes: NDArray[np.int64]  # (k,): train queries in the cluster
    shrinkage: float

    def subset(self, models: Sequence[str]) -> Profiles:
        """Return the profiles of a team of models, ranked among themselves."""
        index = [self.models.index(m) for m in models]
        estimates = self.estimates[:, index]
        return Profiles(
            models=tuple(models), counts=self.counts[:, index], means=self.means[:, index], estimates=estimates,
            ranks=rank_within_clusters(estimates), overall=self.overall[index], sizes=self.sizes,
            shrinkage=self.shrinkage,
        )


def nan_mean(values: NDArray[np.floating], axis: int = 0) -> NDArray[np.float64]:
    """Mean over ``axis`` ignoring NaN; NaN where a slice has no value (without warnings)."""
    values = np.asarray(values, dtype=np.float64)
    present = ~np.isnan(values)
    total = np.where(present, values, 0.0).sum(axis=axis)
    count = present.sum(axis=axis)
    mean: NDArray[np.float64] = np.divide(total, count, out=np.full(total.shape, np.nan), where=count > 0)
    return mean


def group_totals(groups: NDArray[np.integer], n_groups: int,
                 scores: NDArray[np.floating]) -> tuple[NDArray[np.float64], NDArray[np.int64]]:
    """Per group (row of ``groups``' labels 0..n_groups-1): each model's sum of scores and count of scored
    queries, shape (n_groups, models) each; NaN scores are not counted."""
    groups = np.asarray(groups, dtype=np.intp)
    present = ~np.isnan(scores)
    onehot = np.zeros((n_groups, groups.shape[0]))
    onehot[groups, np.arange(groups.shape[0])] = 1.0
    return onehot @ np.where(present, scores, 0.0), (onehot @ present).astype(np.int64)


def rank_within_clusters(estimates: NDArray[np.floating]) -> NDArray[np.int64]:
    """Competition-rank each row (cluster), highest estimate first; equal estimates share the better rank."""
    values = np.where(np.isnan(estimates), -np.inf, estimates)
    # rank = 1 + number of models strictly better (beyond the tie tolerance).
    better = values[:, None, :] > values[:, :, None] + TIE_TOLERANCE
    ranks: NDArray[np.int64] = (1 + better.sum(axis=2)).astype(np.int64)
    return ranks


def build_profiles(
    labels: NDArray[np.integer],
    scores: NDArray[np.floating],
    *,
    k: int,
    models: Sequence[str],
    shrinkage: float = 0.0,
    centroids: NDArray[np.floating] | None = None,
    neighbours: int = 1,
) -> Profiles:
    """Build per-cluster profiles from train labels and a (queries x models) score matrix with NaN for missing."""
    labels = np.asarray(labels, dtype=np.intp)
    scores = np.asarray(scores, dtype=np.float64)
    if scores.ndim != 2 or scores.shape[0] != labels.shape[0] or scores.shape[1] != len(models):
        raise ValueError(f"scores must have shape ({labels.shape[0]}, {len(models)}), got {scores.shape}")
    if shrinkage < 0:
        raise ValueError("shrinkage must be >= 0")
    sums, counts = group_totals(labels, k, scores)
    means = np.divide(sums, counts, out=np.full(sums.shape, np.nan), where=counts > 0)
    overall = nan_mean(scores, axis=0)
    if shrinkage > 0:
        prior = _neighbourhood_prior(sums, counts, overall, centroids, neighbours)
        estimates = (sums + shrinkage * prior) / (counts + shrinkage)
        estimates = np.where(np.isnan(estimates), means, estimates)
    else:
        estimates = means
    return Profiles(
        models=tuple(models), counts=counts, means=means, estimates=estimates,
        ranks=rank_within_clusters(estimates), overall=overall,
        sizes=np.bincount(labels, minlength=k).astype(np.int64), shrinkage=float(shrinkage),
    )


def _neighbourhood_prior(
    sums: NDArray[np.float64], counts: NDArray[np.int64], overall: NDArray[np.float64],
    centroids: NDArray[np.floating] | None, neighbours: int,
) -> NDArray[np.float64]:
    k = sums.shape[0]
    if centroids is None or neighbours <= 1:
        return np.broadcast_to(overall, sums.shape).copy()
    similarity = np.asarray(centroids, dtype=np.float64) @ np.asarray(centroids, dtype=np.float64).T
    nearest = np.argsort(-similarity, axis=1, kind="stable")[:, : min(neighbours, k)]
    local_sums = sums[nearest].sum(axis=1)
    local_counts = counts[nearest].sum(axis=1)
    # The neighbourhood itself leans on the overall mean when it is thin (one pseudo-query per neighbour).
    weight = float(neighbours)
    prior = (local_sums + weight * overall) / (local_counts + weight)
    return np.where(np.isnan(prior), overall, prior)


def rank_scores(profiles: Profiles) -> NDArray[np.float64]:
    """Return the paper's s(m) = sum over non-empty clusters of 1 / rank(m, c)."""
    occupied = profiles.sizes > 0
    scores: NDArray[np.float64] = (1.0 / profiles.ranks[occupied]).sum(axis=0)
    return scores


def select_models(profiles: Profiles, m: int) -> list[str]:
    """Pick the top-m models by rank score; ties by overall mean, then by name."""
    if m < 1:
        raise ValueError("the team needs at least one model")
    score = rank_scores(profiles)
    overall = np.nan_to_num(profiles.overall, nan=-np.inf)
    order = sorted(range(len(profiles.models)), key=lambda i: (-score[i], -overall[i], profiles.models[i]))
    return [profiles.models[i] for i in order[:m]]


def first_places(profiles: Profiles) -> dict[str, list[int]]:
    """Return, for each model, the non-empty clusters where it ranks first (ties included)."""
    result: dict[str, list[int]] = {name: [] for name in profiles.models}
    for c in np.flatnonzero(profiles.sizes > 0):
        for i in np.flatnonzero(profiles.ranks[c] == 1):
            result[profiles.models[i]].append(int(c))
    return result
