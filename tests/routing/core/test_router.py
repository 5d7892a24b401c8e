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


# --- the dataset router and the registry --------------------------------------------------------------------

import math  # noqa: E402

import pytest  # noqa: E402

from routing.core.clustering import fit_clusters, normalise  # noqa: E402
from routing.core.router import ROUTERS, Clusterings, DatasetRouter, TrainData, fit_router, get_router  # noqa: E402


def two_datasets(n: int = 40, seed: int = 0) -> TrainData:
    """Dataset "p" near axis 0, where model 0 wins; dataset "q" near axis 1, where model 1 wins."""
    rng = np.random.default_rng(seed)
    which = np.arange(n) % 2
    x = np.eye(2, 8)[which] * 3 + rng.normal(scale=0.3, size=(n, 8))
    scores = np.where(which[:, None] == np.array([[0, 1]]), 1.0, 0.0)
    return TrainData(x.astype(np.float32), scores, np.where(which == 0, "p", "q").astype(np.str_))


def test_the_dataset_router_weighs_datasets_by_the_nearest_train_queries() -> None:
    train = two_datasets()
    one = Clustering("kmeans", 1, 0, np.ones((1, 8), dtype=np.float32) / np.sqrt(8))
    router = DatasetRouter.fit(train.embeddings, train.scores, train.datasets.tolist(), ("a", "b"),
                               clustering=one, shrinkage=math.inf, neighbours=5)
    assert router.datasets == ("p", "q") and router.estimates.shape == (2, 1, 2)
    assert router.dataset_means.tolist() == [[1.0, 0.0], [0.0, 1.0]]
    queries = np.eye(2, 8, dtype=np.float32) * 3
    weights = router.dataset_weights(queries)
    assert np.allclose(weights.sum(axis=1), 1.0)
    assert weights[0, 0] > 0.99 and weights[1, 1] > 0.99
    assert choose(router, queries)[:, 0].tolist() == [0, 1]


def test_the_dataset_router_refines_by_cluster_within_a_dataset_and_shrinks_toward_the_dataset_mean() -> None:
    # One dataset, two clusters: model "a" is right in cluster 0, "b" in cluster 1.
    x = np.array([[1, 0]] * 4 + [[0, 1]] * 4, dtype=np.float32)
    scores = np.array([[1, 0]] * 4 + [[0, 1]] * 4, dtype=float)
    clustering = Clustering("kmeans", 2, 0, CENTROIDS)
    refined = DatasetRouter.fit(x, scores, ["d"] * 8, ("a", "b"), clustering=clustering, shrinkage=4.0)
    # (4 * 1 + 4 * 0.5) / (4 + 4) = 0.75 for the cluster's winner, 0.25 for the other.
    assert np.allclose(refined.model_scores(np.array([[1.0, 0.0]])), [[0.75, 0.25]])
    assert choose(refined, np.array([[0.0, 1.0]]))[0, 0] == 1
    plain = DatasetRouter.fit(x, scores, ["d"] * 8, ("a", "b"), clustering=clustering, shrinkage=math.inf)
    assert np.allclose(plain.model_scores(np.array([[1.0, 0.0]])), [[0.5, 0.5]])


def test_the_dataset_router_refuses_inconsistent_input() -> None:
    clustering = Clustering("kmeans", 2, 0, CENTROIDS)
    with pytest.raises(ValueError, match="same train queries"):
        DatasetRouter.fit(np.ones((3, 2)), np.ones((2, 2)), ["a"] * 3, ("m", "n"), clustering=clustering, shrinkage=1.0)
    with pytest.raises(ValueError, match="shrinkage"):
        DatasetRouter.fit(np.ones((2, 2)), np.ones((2, 2)), ["a"] * 2, ("m", "n"), clustering=clustering,
                          shrinkage=-1.0)
    with pytest.raises(ValueError, match="search_share"):
        DatasetRouter.fit(np.ones((2, 2)), np.ones((2, 2)), ["a"] * 2, ("m", "n"), clustering=clustering,
                          shrinkage=1.0, search_share=0.0)


def test_the_neighbour_search_visits_the_nearest_clusters_and_finds_what_an_exact_search_finds_there() -> None:
    rng = np.random.default_rng(3)
    x = rng.normal(size=(400, 16)).astype(np.float32)
    scores = rng.random((400, 3))
    datasets = rng.choice(["d0", "d1", "d2", "d3"], size=400).tolist()
    clustering = fit_clusters(x, k=16, seed=0)
    exact = DatasetRouter.fit(x, scores, datasets, ("a", "b", "c"), clustering=clustering, shrinkage=math.inf,
                              search_share=1.0)
    partial = DatasetRouter.fit(x, scores, datasets, ("a", "b", "c"), clustering=clustering, shrinkage=math.inf,
                                search_share=0.25)
    assert (exact.probes, partial.probes) == (16, 4)
    queries = rng.normal(size=(60, 16)).astype(np.float32)
    # Against a brute-force search over every train query (centred as the router centres them).
    centred = normalise(normalise(x) - exact.centre)
    q = normalise(normalise(queries) - exact.centre)
    truth = np.argsort(-(q @ centred.T), axis=1)[:, :10]
    names = np.asarray(sorted(set(datasets)))
    for i in range(len(queries)):
        expected = np.bincount(np.searchsorted(names, np.asarray(datasets)[truth[i]]),
                               weights=np.clip((q @ centred.T)[i, truth[i]], 1e-6, None), minlength=4)
        assert np.allclose(exact.dataset_weights(queries[i:i + 1])[0], expected / expected.sum(), atol=1e-5)
    # The partial search is the brute-force search over the train queries of the query's 4 nearest clusters.
    labels = clustering.assign(x)
    partial_w = partial.dataset_weights(queries)
    for i in range(len(queries)):
        nearest = np.argsort(-(clustering.centroids @ normalise(queries[i:i + 1])[0]), kind="stable")[:4]
        allowed = np.flatnonzero(np.isin(labels, nearest))
        similarity = q[i] @ centred[allowed].T
        top = allowed[np.argsort(-similarity, kind="stable")[:10]]
        expected = np.bincount(np.searchsorted(names, np.asarray(datasets)[top]),
                               weights=np.clip(q[i] @ centred[top].T, 1e-6, None), minlength=4)
        assert np.allclose(partial_w[i], expected / expected.sum(), atol=1e-5)
    assert not np.allclose(partial_w, exact.dataset_weights(queries))  # it did search less
    # One query at a time or many at once: the same numbers.
    assert np.array_equal(partial.model_scores(queries), np.vstack([partial.model_scores(v[None]) for v in queries]))


def test_every_registered_router_fits_and_scores_every_model() -> None:
    train = two_datasets()
    assert {"cluster", "soft", "knn", "dataset"} <= set(ROUTERS)
    clusterings = Clusterings(train.embeddings)
    for name in ROUTERS:
        router = fit_router(name, train, ("a", "b"), {"k": 2} if "k" in ROUTERS[name].parameters else {}, clusterings)
        scores = router.model_scores(np.eye(2, 8, dtype=np.float32) * 3)
        assert scores.shape == (2, 2) and np.isfinite(scores).all(), name
        assert choose(router, np.eye(2, 8, dtype=np.float32) * 3)[:, 0].tolist() == [0, 1], name
    # Routers fitted together share one clustering per (method, k, seed).
    assert clusterings.get("kmeans", 2, 42) is clusterings.get("kmeans", 2, 42)


def test_the_registry_refuses_unknown_routers_and_parameters() -> None:
    with pytest.raises(ValueError, match="unknown router 'nope'"):
        get_router("nope")
    with pytest.raises(ValueError, match="has no parameter bogus"):
        fit_router("dataset", two_datasets(), ("a", "b"), {"bogus": 1})
    assert get_router("dataset").resolve({"shrinkage": 8})["shrinkage"] == 8.0
    with pytest.raises(ValueError, match="search_share must be a number above 0 and at most 1"):
        get_router("dataset").resolve({"search_share": 1.5})
    with pytest.raises(ValueError, match="k must be a whole number >= 1"):
        get_router("cluster").resolve({"k": 0})
    with pytest.raises(ValueError, match="method must be one of"):
        get_router("cluster").resolve({"method": "dbscan"})


def test_the_row_ranker_orders_exactly_as_rank_models_does() -> None:
    from routing.core.router import RowRanker

    rng = np.random.default_rng(11)
    for _ in range(200):
        m = int(rng.integers(1, 8))
        # Few distinct values, NaNs and near-ties (within the tolerance) make ties common.
        scores = rng.choice([0.1, 0.5, 0.5 + 1e-12, 0.9, np.nan], size=m)
        overall = rng.choice([0.2, 0.4, np.nan], size=m)
        first = rng.random(m) < 0.5
        assert RowRanker(overall, first)(scores).tolist() == rank_models(scores[None], overall, first)[0].tolist()
        assert RowRanker(overall)(scores).tolist() == rank_models(scores[None], overall)[0].tolist()
