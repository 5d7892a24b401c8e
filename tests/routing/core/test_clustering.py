from __future__ import annotations

import numpy as np
import pytest

from routing.core.clustering import CLUSTERING_METHODS, Clustering, fit_clusters


def blobs(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centres = np.eye(3, 8) * 5
    labels = np.repeat(np.arange(3), 20)
    return (centres[labels] + rng.normal(scale=0.3, size=(60, 8))).astype(np.float32), labels


def same_partition(a: np.ndarray, b: np.ndarray) -> bool:
    return len(set(zip(a.tolist(), b.tolist()))) == len(set(a.tolist())) == len(set(b.tolist()))


def test_assign_picks_the_most_similar_centroid_by_cosine() -> None:
    clustering = Clustering("kmeans", 2, 0, np.array([[1, 0], [0, 1]], dtype=np.float32))
    # Length does not matter, direction does: (10, 1) is closer to (1, 0) than (0.1, 0.2) is.
    assert clustering.assign(np.array([[10, 1], [0.1, 0.2], [-1, 5]])).tolist() == [0, 1, 1]


def test_an_exact_tie_goes_to_the_lower_cluster_index() -> None:
    clustering = Clustering("kmeans", 2, 0, np.array([[1, 0], [0, 1]], dtype=np.float32))
    assert clustering.assign(np.array([[1.0, 1.0]])).tolist() == [0]


@pytest.mark.parametrize("method", sorted(CLUSTERING_METHODS))
def test_every_method_recovers_well_separated_groups(method: str) -> None:
    x, truth = blobs()
    clustering = fit_clusters(x, k=3, method=method, seed=1)
    assert clustering.centroids.shape == (3, 8)
    assert np.allclose(np.linalg.norm(clustering.centroids, axis=1), 1, atol=1e-5)
    assert same_partition(clustering.assign(x), truth)


def test_kmeans_is_reproducible_with_a_seed() -> None:
    x, _ = blobs(3)
    a = fit_clusters(x, k=5, seed=7).centroids
    b = fit_clusters(x, k=5, seed=7).centroids
    assert np.array_equal(a, b)


def test_k_is_capped_by_the_number_of_distinct_points() -> None:
    x = np.array([[1, 0], [1, 0], [0, 1]], dtype=np.float32)
    assert fit_clusters(x, k=10).k == 2


def test_bad_arguments_are_refused() -> None:
    x, _ = blobs()
    with pytest.raises(ValueError, match="unknown clustering method 'dbscan'; known: agglomerative, birch, "):
        fit_clusters(x, k=3, method="dbscan")
    with pytest.raises(ValueError, match="at least 1"):
        fit_clusters(x, k=0)
