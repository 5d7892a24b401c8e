from __future__ import annotations

import numpy as np
import pytest

from routing.core.profiles import build_profiles, first_places, rank_scores, rank_within_clusters, select_models

nan = np.nan


def test_profiles_count_and_average_only_where_a_model_was_evaluated() -> None:
    labels = np.array([0, 0, 1, 1, 1])
    scores = np.array([[1, nan], [0, 1], [1, 0], [1, nan], [0, nan]], dtype=float)
    p = build_profiles(labels, scores, k=3, models=["a", "b"])
    assert p.counts.tolist() == [[2, 1], [3, 1], [0, 0]]
    assert np.allclose(p.means[:2], [[0.5, 1.0], [2 / 3, 0.0]])
    assert np.isnan(p.means[2]).all()
    assert p.sizes.tolist() == [2, 3, 0]
    assert np.allclose(p.overall, [3 / 5, 0.5])


def test_ranks_share_the_better_place_on_ties_and_skip_the_next() -> None:
    ranks = rank_within_clusters(np.array([[0.5, 0.9, 0.5, 0.1], [nan, 0.2, 0.2, 0.2]]))
    assert ranks.tolist() == [[2, 1, 2, 4], [4, 1, 1, 1]]


def test_rank_score_sums_reciprocal_ranks_over_clusters_with_queries() -> None:
    labels = np.array([0, 1, 2])
    scores = np.array([[1, 0, 0], [0, 1, 0], [1, 1, 0]], dtype=float)
    p = build_profiles(labels, scores, k=4, models=["a", "b", "c"])  # cluster 3 is empty: it does not count
    # cluster 0: a=1, b=2, c=2; cluster 1: b=1, a=2, c=2; cluster 2: a=b=1, c=3.
    assert np.allclose(rank_scores(p), [1 + 0.5 + 1, 0.5 + 1 + 1, 0.5 + 0.5 + 1 / 3])
    assert select_models(p, 2) == ["a", "b"]  # equal rank scores and overall means: by name
    assert first_places(p) == {"a": [0, 2], "b": [1, 2], "c": []}


def test_selection_breaks_rank_score_ties_by_overall_mean() -> None:
    labels = np.array([0, 0, 1, 1])
    scores = np.array([[1, 0], [1, 0.9], [0, 1], [0.2, 1]], dtype=float)
    p = build_profiles(labels, scores, k=2, models=["x", "y"])
    assert np.allclose(rank_scores(p), [1.5, 1.5])
    assert select_models(p, 1) == ["y"]  # y's overall 0.725 beats x's 0.55


def test_shrinkage_pulls_small_clusters_toward_the_overall_score() -> None:
    # Model "good" is better overall; one lucky query makes "lucky" win the tiny cluster 1 under plain means.
    labels = np.array([0] * 20 + [1])
    scores = np.array([[0.8, 0.4]] * 20 + [[0.0, 1.0]])
    plain = build_profiles(labels, scores, k=2, models=["good", "lucky"])
    robust = build_profiles(labels, scores, k=2, models=["good", "lucky"], shrinkage=4)
    assert plain.ranks[1].tolist() == [2, 1]
    assert robust.ranks[1].tolist() == [1, 2]
    # A big cluster barely moves.
    assert abs(robust.estimates[0, 0] - 0.8) < 0.01


def test_a_subset_reranks_the_team_among_itself() -> None:
    labels = np.array([0, 0])
    scores = np.array([[1, 0.5, 0], [1, 0.5, 0]])
    team = build_profiles(labels, scores, k=1, models=["a", "b", "c"]).subset(["c", "b"])
    assert team.models == ("c", "b") and team.ranks.tolist() == [[2, 1]]


def test_a_score_matrix_of_the_wrong_shape_is_refused() -> None:
    with pytest.raises(ValueError, match="scores must have shape"):
        build_profiles(np.array([0, 1]), np.zeros((3, 2)), k=2, models=["a", "b"])
