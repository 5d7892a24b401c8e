"""The pure serving core: routing tables, answering with fallback, and voting over real normalisers."""
from __future__ import annotations

import numpy as np
import pytest

from evaluation.core.generation import Choice, CircuitOpenError, Completion, GenerationError
from evaluation.core.grading import extract_answer, normaliser
from routing.core.dispatch import NoModelAnswered, RoutingTable, answer, first_stream


def table(team=("a", "b")) -> RoutingTable:  # type: ignore[no-untyped-def]
    centroids = np.eye(3, 4, dtype=np.float32)  # clusters along axes 0, 1, 2
    estimates = np.array([
        [0.9, 0.5, 0.7],  # cluster 0: a > c > b
        [0.2, 0.8, 0.95],  # cluster 1: c > b > a
        [0.6, 0.6, np.nan],  # cluster 2: a = b (tie), c unknown
    ])
    return RoutingTable(centroids=centroids, models=("a", "b", "c"), estimates=estimates,
                        overall=np.array([0.5, 0.7, 0.9]), team=team,
                        categories=("gsm8k", "mmlu", "humaneval"), task_types=("math", "mcq", "code"))


def test_route_goes_to_the_nearest_cluster_and_orders_the_team_first_by_cluster_score() -> None:
    route = table().route(np.array([0.1, 0.9, 0.3, 0.0]))
    assert route.cluster == 1 and route.category == "mmlu" and route.task_type == "mcq"
    assert route.similarity == pytest.approx(0.9 / np.linalg.norm([0.1, 0.9, 0.3]), rel=1e-6)
    assert [c for c, _ in route.runner_ups] == [2, 0]
    # c has the best score in cluster 1 but is not in the team: it comes after the team, as a last resort.
    assert [(c.model, c.rank, c.in_team) for c in route.candidates] == [("b", 1, True), ("a", 2, True), ("c", 3, False)]
    assert route.candidates[0].score == pytest.approx(0.8)


def test_ties_in_a_cluster_go_to_the_better_overall_model_and_unknown_scores_come_last() -> None:
    route = table(team=("a", "b", "c")).route(np.array([0.0, 0.0, 1.0, 0.0]))
    assert [c.model for c in route.candidates] == ["b", "a", "c"]  # a = b in cluster 2, b has the better overall
    assert route.candidates[2].score is None


def test_a_table_refuses_shapes_that_do_not_fit() -> None:
    with pytest.raises(ValueError, match="estimates"):
        RoutingTable(centroids=np.eye(2, dtype=np.float32), models=("a",), estimates=np.zeros((3, 1)),
                     overall=np.zeros(1), team=("a",))
    with pytest.raises(ValueError, match="without a profile"):
        RoutingTable(centroids=np.eye(2, dtype=np.float32), models=("a",), estimates=np.zeros((2, 1)),
                     overall=np.zeros(1), team=("z",))
    with pytest.raises(ValueError, match="dimensions"):
        table().route(np.ones(7))


def test_a_table_with_a_fitted_router_scores_each_query_with_it_and_orders_models_by_the_one_tie_rule() -> None:
    from routing.core.clustering import Clustering
    from routing.core.router import DatasetRouter, choose, rank_models

    # Two datasets along axes 0 and 1: "a" wins the first, "b" the second; "c" ties "b" on the second.
    x = np.array([[1, 0, 0, 0]] * 4 + [[0, 1, 0, 0]] * 4, dtype=np.float32)
    scores = np.array([[1, 0, 0]] * 4 + [[0, 1, 1]] * 4, dtype=float)
    router = DatasetRouter.fit(x, scores, ["p"] * 4 + ["q"] * 4, ("a", "b", "c"),
                               clustering=Clustering("kmeans", 2, 0, np.eye(2, 4, dtype=np.float32)),
                               shrinkage=float("inf"), neighbours=3)
    with_router = RoutingTable(centroids=np.eye(3, 4, dtype=np.float32), models=("a", "b", "c"),
                               estimates=np.zeros((3, 3)), overall=router.overall, team=("a", "b", "c"),
                               router=router)
    for query in (np.array([1.0, 0.1, 0, 0]), np.array([0.1, 1.0, 0, 0])):
        route = with_router.route(query)
        offline = rank_models(router.model_scores(query[None, :]), router.overall)[0]
        assert [c.model for c in route.candidates] == [("a", "b", "c")[j] for j in offline]
        assert route.candidates[0].model == ("a", "b", "c")[choose(router, query[None, :])[0, 0]]
    # b and c tie on dataset q and overall: the lower model index wins, everywhere.
    assert [c.model for c in with_router.route(np.array([0.0, 1.0, 0, 0])).candidates][:2] == ["b", "c"]
    # The team still comes first: with only c in the team, c leads even where b ties it.
    team_c = RoutingTable(centroids=np.eye(3, 4, dtype=np.float32), models=("a", "b", "c"),
                          estimates=np.zeros((3, 3)), overall=router.overall, team=("c",), router=router)
    assert [c.model for c in team_c.route(np.array([0.0, 1.0, 0, 0])).candidates] == ["c", "b", "a"]
    with pytest.raises(ValueError, match="router must score the table's models"):
        RoutingTable(centroids=np.eye(3, 4, dtype=np.float32), models=("a", "c", "b"), estimates=np.zeros((3, 3)),
                     overall=router.overall, team=("a",), router=router)


class Servers:
    """Fake model servers: each model answers from a list of texts, or raises."""

    def __init__(self, answers: dict[str, list[str] | Exception]) -> None:
        self.answers = answers
        self.calls: list[tuple[str, int]] = []

    def call(self, model: str, n: int, timeout_s: float) -> Completion:
        self.calls.append((model, n))
        reply = self.answers[model]
        if isinstance(reply, Exception):
            raise reply
        texts = (reply * n)[:n]
        return Completion(choices=tuple(Choice(t, "stop") for t in texts), prompt_tokens=10,
                          completion_tokens=5 * n, latency_ms=1.0, attempts=1, server_model=model)


def run(servers: Servers, candidates, *, strategy="self_consistency", samples=3, availability=None,  # type: ignore[no-untyped-def]
        task_type="math", deadline=1e12):
    return answer(candidates, strategy=strategy, samples=samples, call=servers.call,
                  availability=availability or (lambda m: None), extract=lambda t: extract_answer(t).answer,
                  normalise=normaliser(task_type), deadline=deadline)


def test_self_consistency_merges_answers_that_differ_only_in_form() -> None:
    servers = Servers({"a": ["The answer is 0.5", "\\boxed{\\frac{1}{2}}", "The answer is 3"]})
    outcome = run(servers, ["a", "b"])
    assert outcome.vote is not None and outcome.vote.tally[0][1] == 2
    assert outcome.winner is not None and outcome.winner.text == "The answer is 0.5"
    assert outcome.models_used == ["a"] and servers.calls == [("a", 3)]
    assert [s.key for s in outcome.samples][0] == [s.key for s in outcome.samples][1]
    assert outcome.prompt_tokens == 10 and outcome.completion_tokens == 15 and not outcome.fallback


def test_direct_asks_for_one_sample() -> None:
    servers = Servers({"a": ["Answer: 7"]})
    outcome = run(servers, ["a"], strategy="direct", samples=10)
    assert servers.calls == [("a", 1)] and outcome.vote is not None and outcome.vote.answer == "7"


def test_a_failing_model_falls_back_to_the_next_and_says_so() -> None:
    servers = Servers({"a": GenerationError("connect", "could not connect to a"), "b": ["Answer: 4"]})
    outcome = run(servers, ["a", "b"])
    assert outcome.fallback and outcome.answered_by == "b"
    assert [(f.model, f.kind) for f in outcome.failures] == [("a", "connect")]


def test_a_model_without_endpoint_is_skipped_without_counting_as_fallback_but_an_open_circuit_does() -> None:
    servers = Servers({"b": ["Answer: 4"]})
    outcome = run(servers, ["a", "b"], availability=lambda m: "no endpoint" if m == "a" else None)
    assert not outcome.fallback and [s.model for s in outcome.skipped] == ["a"] and servers.calls == [("b", 3)]
    outcome = run(servers, ["a", "b"], availability=lambda m: "circuit open: x" if m == "a" else None)
    assert outcome.fallback
    servers = Servers({"a": CircuitOpenError("open", retry_in_s=3.0), "b": ["Answer: 4"]})
    outcome = run(servers, ["a", "b"])
    assert outcome.fallback and outcome.skipped[0].reason.startswith("circuit open")


def test_model_switch_adds_the_next_model_only_while_agreement_is_low() -> None:
    servers = Servers({"a": ["Answer: 1", "Answer: 2", "Answer: 3"], "b": ["Answer: 2"], "c": ["Answer: 9"]})
    outcome = run(servers, ["a", "b", "c"], strategy="model_switch")
    # a alone agrees 1/3 < 0.5; with b's three 2s, 2 has 4/6 votes and the search stops before c.
    assert outcome.models_used == ["a", "b"] and outcome.vote is not None and outcome.vote.answer == "2"
    assert servers.calls == [("a", 3), ("b", 3)] and not outcome.fallback


def test_no_model_answering_raises_with_every_reason() -> None:
    servers = Servers({"a": GenerationError("timeout", "a timed out"), "b": GenerationError("server_error", "b 500")})
    with pytest.raises(NoModelAnswered, match="a timed out.*b 500") as caught:
        run(servers, ["a", "b", "c"], availability=lambda m: "no endpoint" if m == "c" else None)
    assert [s.model for s in caught.value.outcome.skipped] == ["c"]


def test_nothing_is_called_after_the_deadline() -> None:
    servers = Servers({"a": ["Answer: 1"]})
    with pytest.raises(NoModelAnswered, match="deadline"):
        run(servers, ["a"], deadline=-1.0)
    assert servers.calls == []


def test_first_stream_falls_back_when_a_model_fails_before_its_first_piece() -> None:
    def open_stream(model: str, timeout_s: float):  # type: ignore[no-untyped-def]
        if model == "a":
            def broken():  # type: ignore[no-untyped-def]
                raise GenerationError("connect", "a is down")
                yield ""  # pragma: no cover
            return broken()
        return iter(["Hel", "lo"])

    model, first, rest, outcome = first_stream(["a", "b"], open_stream=open_stream, availability=lambda m: None,
                                               deadline=1e12)
    assert (model, first, list(rest)) == ("b", "Hel", ["lo"])
    assert outcome.fallback and outcome.failures[0].model == "a"


def test_a_strategy_registered_in_one_place_is_served(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from routing.core import dispatch
    from routing.core.voting import majority_vote

    # A throw-away strategy: consult models while they disagree, then take the last one's word.
    monkeypatch.setattr(dispatch, "STRATEGIES", dispatch.STRATEGIES.copy())
    last_word = dispatch.register_strategy(dispatch.Strategy(
        "last_word", "last word", "the last model consulted decides",
        lambda groups, normalise, threshold: majority_vote(groups[-1], normalise), consults_next=True))
    assert list(dispatch.STRATEGIES)[-1] == "last_word"
    servers = Servers({"a": ["Answer: 1", "Answer: 3", "Answer: 4"], "b": ["Answer: 2", "Answer: 6", "Answer: 7"],
                       "c": ["Answer: 5"]})
    outcome = run(servers, ["a", "b", "c"], strategy="last_word", samples=3)
    # Pooled agreement stays below 0.5 (1/3, 1/6, 3/9), so every model is asked; c's answer wins, not the pool's.
    assert servers.calls == [("a", 3), ("b", 3), ("c", 3)]
    assert outcome.vote is not None and outcome.vote.answer == "5" and outcome.strategy == "last_word"
    with pytest.raises(ValueError, match="already registered"):
        dispatch.register_strategy(last_word)
