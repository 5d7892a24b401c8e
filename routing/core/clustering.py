"""Cluster query embeddings into K groups; a fitted clustering is plain data (unit-length centroids).

Every method returns centroids, so that the platform can store them in pgvector and assign new queries
by cosine similarity: k-means and the Gaussian mixture use their own centres; agglomerative (ward),
spectral and BIRCH, which have none, use the mean of each cluster's members.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from avengers_web.core.registry import Registry


def normalise(rows: NDArray[np.floating]) -> NDArray[np.float32]:
    """Return the rows scaled to unit length (zero rows stay zero)."""
    rows = np.asarray(rows, dtype=np.float32)
    norms = np.linalg.norm(rows, axis=-1, keepdims=True)
    unit: NDArray[np.float32] = np.divide(rows, norms, out=np.zeros_like(rows), where=norms > 0)
    return unit


@dataclass(frozen=True)
class Clustering:
    method: str
    k: int
    seed: int
    centroids: NDArray[np.float32]  # shape (k, dim), rows have unit length

    def similarities(self, embeddings: NDArray[np.floating]) -> NDArray[np.float32]:
        """Return the cosine similarity of each row to each centroid, shape (n, k)."""
        return normalise(embeddings) @ self.centroids.T

    def assign(self, embeddings: NDArray[np.floating]) -> NDArray[np.intp]:
        """Return the index of the most similar centroid for each row (ties: the lower index)."""
        return np.asarray(self.similarities(embeddings).argmax(axis=1), dtype=np.intp)


FitLabels = Callable[[NDArray[np.float32], int, int], tuple[NDArray[np.intp], NDArray[np.float32] | None]]
CLUSTERING_METHODS: Registry[FitLabels] = Registry("clustering method")


def register_method(name: str) -> Callable[[FitLabels], FitLabels]:
    """Register the decorated function, (unit rows, k, seed) -> (labels, centres or None), under ``name``."""
    return CLUSTERING_METHODS.registering(name, lambda function: function)


@register_method("kmeans")
def _kmeans(x: NDArray[np.float32], k: int, seed: int) -> tuple[NDArray[np.intp], NDArray[np.float32] | None]:
    from sklearn.cluster import KMeans

    # The paper's settings.
    model = KMeans(n_clusters=k, init="k-means++", n_init="auto", max_iter=1000, algorithm="elkan", random_state=seed)
    labels = model.fit_predict(x)
    return labels, model.cluster_centers_.astype(np.float32)


@register_method("agglomerative")
def _agglomerative(x: NDArray[np.float32], k: int, seed: int) -> tuple[NDArray[np.intp], NDArray[np.float32] | None]:
    from sklearn.cluster import AgglomerativeClustering

    return AgglomerativeClustering(n_clusters=k, linkage="ward").fit_predict(x), None


@register_method("gmm")
def _gmm(x: NDArray[np.float32], k: int, seed: int) -> tuple[NDArray[np.intp], NDArray[np.float32] | None]:
    from sklearn.mixture import GaussianMixture

    # Diagonal covariances: full ones in 384 dimensions need far more points per component than we have.
    model = GaussianMixture(n_components=k, covariance_type="diag", random_state=seed, reg_covar=1e-4, max_iter=200)
    labels = model.fit_predict(x)
    return labels, model.means_.astype(np.float32)


@register_method("spectral")
def _spectral(x: NDArray[np.float32], k: int, seed: int) -> tuple[NDArray[np.intp], NDArray[np.float32] | None]:
    from sklearn.cluster import SpectralClustering

    neighbours = max(10, min(50, x.shape[0] // max(k, 1)))
    model = SpectralClustering(n_clusters=k, affinity="nearest_neighbors", n_neighbors=min(neighbours, x.shape[0] - 1),
                               assign_labels="cluster_qr", random_state=seed)
    return model.fit_predict(x), None


@register_method("birch")
def _birch(x: NDArray[np.float32], k: int, seed: int) -> tuple[NDArray[np.intp], NDArray[np.float32] | None]:
    from sklearn.cluster import Birch

    # Unit vectors are at most 2 apart; a small threshold keeps enough subclusters for K groups.
    return Birch(n_clusters=k, threshold=0.3).fit_predict(x), None


def fit_clusters(embeddings: NDArray[np.floating], *, k: int, method: str = "kmeans", seed: int = 42) -> Clustering:
    """Cluster the rows into ``k`` groups (at most one per distinct row) and return unit-length centroids."""
    fit_labels = CLUSTERING_METHODS.find(method)
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    x = normalise(embeddings)
    if x.ndim != 2 or x.shape[0] == 0:
        raise ValueError("need a non-empty 2-D array of embeddings")
    k = min(k, len(np.unique(x.round(6), axis=0)))
    if k == 1:
        labels = np.zeros(x.shape[0], dtype=np.intp)
        centres = None
    else:
        labels, centres = fit_labels(x, k, seed)
    labels = np.asarray(labels, dtype=np.intp)
    if centres is None:
        centres = np.stack([x[labels == c].mean(axis=0) if np.any(labels == c) else np.zeros(x.shape[1], np.float32)
                            for c in range(k)])
    return Clustering(method=method, k=k, seed=seed, centroids=normalise(centres))
