from __future__ import annotations

import numpy as np

from routing.core.heldout import (
    RouterSpec,
    Split,
    baseline_scores,
    choose_shrinkage,
    folds_by_dataset,
    realised_scores,
    run_protocol,
    summarise,
)

nan = np.nan


def test_a_model_without_a_score_hands_over_to_the_next_in_order() -> None:
    scores = np.array([[nan, 0.2, 1.0], [0.5, nan, nan]])
    order = np.array([[0, 1, 2], [1, 0, 2]])
    assert realised_scores(order, scores).tolist() == [0.2, 0.5]
    assert np.allclose(realised_scores(order, scores, top_n=2), [0.6, 0.5])


def test_baselines_follow_their_definitions() -> None:
    train = Split(np.zeros((4, 2), np.float32), np.array([[1, 0], [1, 0], [0, 1], [0.2, 0.9]]),
                  np.array(["a", "a", "b", "b"]))
    test = Split(np.zeros((3, 2), np.float32), np.array([[0, 1], [1, 0], [0.5, nan]]), np.array(["a", "b", "c"]))
    values = baseline_scores(train, test)
    # Overall train means: model 0 = 0.55, model 1 = 0.475, so best_single is model 0.
    assert values["best_single"].tolist() == [0, 1, 0.5]
    # Dataset a's best is model 0, b's is model 1; c has no train queries and falls back on best_single.
    assert values["best_per_dataset"].tolist() == [0, 0, 0.5]
    assert values["random"].tolist() == [0.5, 0.5, 0.5]
    assert values["oracle"].tolist() == [1, 1, 0.5]


def test_summaries_separate_in_and_out_of_distribution_datasets() -> None:
    report = summarise(np.array([1, 0, 1, 0.5]), np.array(["a", "a", "b", "ood"]), {"a", "b"})
    assert report.per_dataset == {"a": 50.0, "b": 100.0, "ood": 50.0}
    assert (report.in_distribution, report.out_of_distribution) == (75.0, 50.0)
    assert summarise(np.array([1.0]), np.array(["a"]), {"a"}).out_of_distribution is None


def test_folds_spread_every_dataset_evenly() -> None:
    datasets = np.array(["a"] * 10 + ["b"] * 5)
    fold = folds_by_dataset(datasets, 5, seed=1)
    assert sorted(fold[:10].tolist()) == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4]
    assert sorted(fold[10:].tolist()) == [0, 1, 2, 3, 4]


def test_the_chosen_shrinkage_is_the_largest_within_one_standard_error_of_the_best() -> None:
    # The best mean is s=4 (61.0); its folds give SE = std(ddof=1) / sqrt(4), about 0.58.
    cv = {0.0: [60, 60, 60, 60], 4.0: [60, 62, 60, 62], 8.0: [60.6, 60.6, 60.6, 60.6], 16.0: [59, 59, 59, 59]}
    se = float(np.std([60, 62, 60, 62], ddof=1) / 2)  # 0.577
    assert 61.0 - se < 60.6 and 61.0 - se > 59.0
    assert choose_shrinkage(cv) == 8.0


def test_without_spread_the_best_shrinkage_wins_and_ties_go_to_the_smaller() -> None:
    assert choose_shrinkage({0.0: [61.0, 61.0], 4.0: [62.0, 62.0], 8.0: [62.0, 62.0]}) == 8.0
    assert choose_shrinkage({0.0: [63.0, 63.0], 4.0: [62.0, 62.0]}) == 0.0


def test_routing_beats_a_single_model_when_topics_favour_different_models() -> None:
    rng = np.random.default_rng(0)
    centres = np.eye(2, 16) * 4
    def make(n: int) -> Split:
        topic = rng.integers(0, 2, size=n)
        x = (centres[topic] + rng.normal(scale=0.5, size=(n, 16))).astype(np.float32)
        # Model 0 is good at topic 0, model 1 at topic 1, model 2 is mediocre everywhere.
        p = np.where(topic[:, None] == np.array([[0, 1]]), 0.9, 0.2)
        scores = np.column_stack([rng.random((n, 2)) < p, rng.random(n) < 0.6]).astype(float)
        return Split(x, scores, np.where(topic == 0, "t0", "t1").astype(np.str_))
    train, test = make(400), make(200)
    reports = run_protocol(train, test, ["m0", "m1", "m2"], seed=42, candidates=[RouterSpec("cluster", {"k": 4,
                                                                                                  "shrinkage": 2.0})]
                           ).reports
    assert reports["avengers"].in_distribution > reports["best_single"].in_distribution + 20
    assert reports["oracle"].in_distribution >= reports["avengers"].in_distribution
    assert reports["random"].in_distribution < reports["avengers"].in_distribution


# --- the router chosen on train, and the protocol over seeds ------------------------------------------------

import math  # noqa: E402
from dataclasses import fields  # noqa: E402

import pytest  # noqa: E402

from routing.core.heldout import DEFAULT_CANDIDATES, choose_router, headline  # noqa: E402


def topics(n: int, rng: np.random.Generator) -> Split:
    """Three datasets on three axes; model i is best on dataset i, and within dataset 0 the sign of the second
    coordinate decides between models 0 and 1."""
    which = rng.integers(0, 3, size=n)
    x = np.eye(3, 12)[which] * 3 + rng.normal(scale=0.4, size=(n, 12))
    good = np.eye(3)[which] * 0.6 + 0.2
    scores = (rng.random((n, 3)) < good).astype(float)
    return Split(x.astype(np.float32), scores, np.array(["d0", "d1", "d2"])[which].astype(np.str_))


def test_the_chosen_router_is_the_first_candidate_within_one_standard_error_of_the_best() -> None:
    a, b, c = RouterSpec("dataset"), RouterSpec("dataset", {"shrinkage": 8.0}), RouterSpec("cluster")
    # The best is b (61.0); the standard error of its folds is 0.58, so the bar is 60.42.
    cv = {a.label: [60.5, 60.5, 60.5, 60.5], b.label: [60.0, 62.0, 60.0, 62.0], c.label: [59.0, 59.0, 59.0, 59.0]}
    assert choose_router([a, b, c], cv) == a
    cv[a.label] = [60.3, 60.3, 60.3, 60.3]
    assert choose_router([a, b, c], cv) == b


def test_a_router_spec_checks_its_parameters_and_writes_infinity_as_text() -> None:
    with pytest.raises(ValueError, match="no parameter"):
        RouterSpec("cluster", {"temperature": 1.0})
    spec = RouterSpec("dataset", {"shrinkage": math.inf, "seed": 3})
    assert spec.label == "dataset(shrinkage=inf)"  # never the seed
    assert RouterSpec("dataset", {"shrinkage": 8.0, "k": 16}).label == "dataset(k=16, shrinkage=8)"
    assert spec.jsonable()["params"]["shrinkage"] == "inf"
    assert [c.name for c in DEFAULT_CANDIDATES][0] == "dataset" and DEFAULT_CANDIDATES[0].params["shrinkage"] == math.inf


def test_the_test_lines_change_neither_the_chosen_router_nor_any_fitted_router() -> None:
    rng = np.random.default_rng(5)
    train, test = topics(300, rng), topics(120, rng)
    candidates = [RouterSpec(c.name, {**c.params, "k": 6} if "k" in c.resolved() else c.params)
                  for c in DEFAULT_CANDIDATES]
    compare = {"paper": RouterSpec("cluster", {"k": 6}), "knn": RouterSpec("knn")}
    first = run_protocol(train, test, ["m0", "m1", "m2"], seed=42, candidates=candidates, compare=compare)
    flipped = Split(test.embeddings, 1.0 - test.scores, test.datasets)
    second = run_protocol(train, flipped, ["m0", "m1", "m2"], seed=42, candidates=candidates, compare=compare)
    assert first.chosen == second.chosen and first.cv == second.cv
    assert set(first.routers) == {"avengers", "paper", "knn"}
    for name, router in first.routers.items():
        other = second.routers[name]
        for f in fields(router):
            a, b = getattr(router, f.name), getattr(other, f.name)
            if isinstance(a, np.ndarray):
                assert np.array_equal(a, b, equal_nan=True), (name, f.name)
            elif f.name not in ("clustering", "profiles"):
                assert a == b, (name, f.name)
    # The test scores did change what was measured, so the comparison above could have failed.
    assert first.reports["oracle"].in_distribution != second.reports["oracle"].in_distribution
    assert first.reports["avengers"].in_distribution > first.reports["best_single"].in_distribution


def test_headline_numbers_follow_their_definitions() -> None:
    from routing.core.heldout import Report

    reports = {"avengers": Report({}, 70.0, None), "best_single": Report({}, 60.0, None),
               "best_per_dataset": Report({}, 65.0, None), "oracle": Report({}, 80.0, None)}
    row = headline(reports)["avengers"]
    assert row == {"accuracy": 70.0, "imp_max": 5.0, "gap_closed": 0.5, "oracle_gap": 10.0 / 80.0}
    assert headline(reports, "out_of_distribution") == {}
