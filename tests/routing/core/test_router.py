from __future__ import annotations

import numpy as np

from routing.core.clustering import Clustering
from routing.core.profiles import build_profiles
from routing.core.router import ClusterRouter, KnnRouter, SoftClusterRouter, choose, rank_models

CENTROIDS = np.array([[1, 0], [0, 1]], dtype=np.float32)


def make_router(scores: np.ndarray, labels: np.ndarray, models: list[str]) -> ClusterRouter:
    profiles = build_profiles(labels, scores, k=2, models=models)
    return ClusterRouter(Clustering("kmeans", 2, 0, CENTROIDS), profiles)


def test_a_query_goes_to_the_best_model_of_its_nearest_cluster() -> None:
    router = make_router(np.array([[1, 0], [0, 1]], dtype=float), np.array([0, 1]), ["a", "b"])
    picked = choose(router, np.array([[0.9, 0.1], [0.2, 0.8]]))
    assert picked[:, 0].tolist() == [0, 1]


def test_ties_in_a_cluster_go_to_the_better_overall_model_then_the_first() -> None:
    labels = np.array([0, 0, 1, 1])
    # In cluster 0 "a" and "b" tie at 1.0; "b" is better overall (it also wins cluster 1).
    scores = np.array([[1, 1, 0], [1, 1, 0], [0, 1, 0], [0, 1, 0]], dtype=float)
    router = make_router(scores, labels, ["a", "b", "c"])
    assert choose(router, np.array([[1.0, 0.0]]), top_n=3).tolist() == [[1, 0, 2]]
    assert rank_models(np.array([[0.5, 0.5]]), np.array([0.3, 0.3])).tolist() == [[0, 1]]


def test_the_soft_router_weighs_nearby_clusters_by_similarity() -> None:
    labels = np.array([0, 1])
    scores = np.array([[0.6, 0.5], [0.0, 1.0]])
    profiles = build_profiles(labels, scores, k=2, models=["a", "b"])
    hard = ClusterRouter(Clustering("kmeans", 2, 0, CENTROIDS), profiles)
    soft = SoftClusterRouter(Clustering("kmeans", 2, 0, CENTROIDS), profiles, neighbours=2, temperature=1.0)
    query = np.array([[0.75, 0.66]])  # a little nearer cluster 0, where "a" wins narrowly
    assert choose(hard, query)[0, 0] == 0
    assert choose(soft, query)[0, 0] == 1  # the neighbour's strong "b" tips the balance
    weights_sum = soft.model_scores(query).sum()
    assert 0 < weights_sum < 2


def test_the_knn_router_averages_the_nearest_train_queries_where_scored() -> None:
    train = np.array([[1, 0], [0.9, 0.1], [0, 1]], dtype=np.float32)
    scores = np.array([[1, np.nan], [1, 0], [0, 1]])
    router = KnnRouter.fit(train, scores, ("a", "b"), k=2)
    s = router.model_scores(np.array([[1.0, 0.0]]))
    assert s[0, 0] == 1.0 and s[0, 1] == 0.0  # "b" scored only on one of the two neighbours
    assert choose(router, np.array([[0.0, 1.0]]))[0, 0] == 1


def test_routing_is_deterministic() -> None:
    rng = np.random.default_rng(1)
    scores = rng.integers(0, 2, size=(40, 4)).astype(float)
    labels = rng.integers(0, 2, size=40)
    router = make_router(scores, labels, ["a", "b", "c", "d"])
    queries = rng.normal(size=(30, 2))
    assert np.array_equal(choose(router, queries, 4), choose(router, queries, 4))
