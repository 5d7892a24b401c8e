"""Tests for majority vote, self-consistency and model switch over small hand-made samples."""
from __future__ import annotations

import re

import pytest

from routing.core.voting import (
    VOTING_RULES,
    Sample,
    Vote,
    VotingRule,
    majority_vote,
    model_switch,
    register_voting_rule,
    self_consistency,
)

_FRACTION = re.compile(r"^\\d?frac\{\s*(-?\d+)\s*\}\{\s*(-?\d+)\s*\}$")
_SLASH = re.compile(r"^(-?\d+)\s*/\s*(-?\d+)$")
_LETTER = re.compile(r"^\(?([A-Ea-e])[.)]?$")


def normalise(answer: str) -> str | None:
    """Map fractions to "a/b" and option letters to "B"; return None when neither fits."""
    text = answer.strip()
    for pattern in (_FRACTION, _SLASH):
        match = pattern.match(text)
        if match:
            return f"{match.group(1)}/{match.group(2)}"
    match = _LETTER.match(text)
    if match:
        return match.group(1).upper()
    if re.fullmatch(r"-?\d+", text):
        return text
    return None


def exploding(answer: str) -> str | None:
    """Raise on "boom", otherwise normalise as usual."""
    if answer == "boom":
        raise RuntimeError("cannot parse")
    return normalise(answer)


def samples(model: str, *answers: str | None) -> list[Sample]:
    return [Sample(model=model, answer=answer, index=i) for i, answer in enumerate(answers)]


def test_the_test_normaliser_handles_fractions_letters_and_whitespace() -> None:
    assert normalise(r"\frac{1}{2}") == normalise(r"\dfrac{1}{2}") == normalise(" 1 / 2 ") == "1/2"
    assert normalise("(b)") == normalise("B.") == normalise(" b ") == "B"
    assert normalise("no idea") is None


def test_equivalent_answers_vote_together() -> None:
    vote = majority_vote(samples("m", r"\frac{1}{2}", "1/2", r"\dfrac{1}{2}", "3/4"), normalise)
    assert vote.answer == "1/2"
    assert vote.tally == (("1/2", 3), ("3/4", 1))
    assert vote.agreement == 0.75
    assert vote.representative == Sample("m", r"\frac{1}{2}", 0)


def test_equivalent_option_letters_vote_together() -> None:
    vote = majority_vote(samples("m", "A", "(b)", "B.", " b "), normalise)
    assert vote.answer == "B"
    assert vote.tally == (("B", 3), ("A", 1))
    assert vote.representative == Sample("m", "(b)", 1)


def test_it_breaks_ties_by_earliest_first_vote() -> None:
    vote = majority_vote(samples("m", "C", "A", "A", "C"), normalise)
    assert vote.answer == "C"
    assert vote.tally == (("C", 2), ("A", 2))
    assert vote.agreement == 0.5


def test_it_breaks_ties_in_favour_of_the_higher_ranked_model() -> None:
    ordered = samples("best", "A", "B") + samples("second", "B", "A")
    assert majority_vote(ordered, normalise).answer == "A"
    # Same answers with the models swapped: now the first vote for B comes first.
    swapped = samples("best", "B", "A") + samples("second", "A", "B")
    assert majority_vote(swapped, normalise).answer == "B"


def test_tally_is_sorted_by_votes_then_earliest_first_vote() -> None:
    vote = majority_vote(samples("m", "D", "C", "A", "A", "C", "A"), normalise)
    assert vote.tally == (("A", 3), ("C", 2), ("D", 1))


def test_empty_answers_never_win_even_when_they_are_the_majority() -> None:
    vote = majority_vote(samples("m", None, "", "   ", "gibberish", "A"), normalise)
    assert vote.answer == "A"
    assert vote.tally == (("A", 1),)
    assert vote.invalid == 4
    assert vote.samples_used == 5
    assert vote.agreement == pytest.approx(0.2)


def test_a_normaliser_returning_empty_string_counts_as_invalid() -> None:
    vote = majority_vote(samples("m", "x", "x", "A"), lambda a: "" if a == "x" else normalise(a))
    assert vote.answer == "A"
    assert vote.invalid == 2


def test_a_raising_normaliser_counts_the_sample_as_invalid() -> None:
    vote = majority_vote(samples("m", "boom", "boom", "1/2"), exploding)
    assert vote.answer == "1/2"
    assert vote.invalid == 2
    assert vote.agreement == pytest.approx(1 / 3)


def test_all_invalid_answers_give_no_answer_and_zero_agreement() -> None:
    vote = majority_vote(samples("m", None, "", "???"), normalise)
    assert vote == Vote(
        answer=None, representative=None, tally=(), agreement=0.0, samples_used=3, models_used=("m",), invalid=3
    )


def test_no_samples_give_an_empty_vote() -> None:
    vote = majority_vote([], normalise)
    assert vote.answer is None
    assert vote.agreement == 0.0
    assert vote.samples_used == 0
    assert vote.models_used == ()


def test_models_used_lists_models_in_order_of_first_appearance() -> None:
    vote = majority_vote(samples("b", "A") + samples("a", "A") + samples("b", "A"), normalise)
    assert vote.models_used == ("b", "a")


def test_self_consistency_votes_over_one_models_samples() -> None:
    vote = self_consistency(samples("m", "1/2", r"\frac{1}{2}", "2/3"), normalise)
    assert vote.answer == "1/2"
    assert vote.models_used == ("m",)


def test_self_consistency_refuses_mixed_models() -> None:
    with pytest.raises(ValueError, match="one model"):
        self_consistency(samples("a", "A") + samples("b", "A"), normalise)


def test_model_switch_stops_at_the_first_model_when_agreement_is_high() -> None:
    groups = [samples("best", "A", "A", "(a)", "B"), samples("second", "B", "B", "B", "B")]
    vote = model_switch(groups, normalise, threshold=0.6)
    assert vote.answer == "A"
    assert vote.models_used == ("best",)
    assert vote.samples_used == 4
    assert vote.agreement == 0.75


def test_model_switch_adds_models_while_agreement_is_low() -> None:
    groups = [
        samples("best", "A", "B", "C"),
        samples("second", "B", "D", "E"),
        samples("third", "B", "B", "B"),
        samples("fourth", "A", "A", "A"),
    ]
    vote = model_switch(groups, normalise, threshold=0.5)
    # After two models B has 2 of 6; after three it has 5 of 9, so the fourth is never asked.
    assert vote.answer == "B"
    assert vote.models_used == ("best", "second", "third")
    assert vote.samples_used == 9
    assert vote.agreement == pytest.approx(5 / 9)
    assert vote.representative == Sample("best", "B", 1)


def test_model_switch_returns_the_last_vote_when_models_run_out() -> None:
    groups = [samples("best", "A", "B"), samples("second", "C", "D")]
    vote = model_switch(groups, normalise, threshold=0.9)
    assert vote.models_used == ("best", "second")
    assert vote.answer == "A"  # four-way tie: the earliest first vote wins
    assert vote.agreement == 0.25


def test_model_switch_stops_when_agreement_equals_the_threshold() -> None:
    groups = [samples("best", "A", "A", "B", "C"), samples("second", "B", "B", "B", "B")]
    vote = model_switch(groups, normalise, threshold=0.5)
    assert vote.agreement == 0.5
    assert vote.models_used == ("best",)
    assert vote.answer == "A"


def test_model_switch_goes_on_just_above_the_boundary() -> None:
    groups = [samples("best", "A", "A", "B", "C"), samples("second", "B", "B", "B", "B")]
    vote = model_switch(groups, normalise, threshold=0.51)
    assert vote.models_used == ("best", "second")
    assert vote.answer == "B"


def test_failed_extractions_lower_agreement_and_trigger_a_switch() -> None:
    groups = [samples("best", "A", None, "", "???"), samples("second", "A", "A", "A", "A")]
    vote = model_switch(groups, normalise, threshold=0.5)
    assert vote.models_used == ("best", "second")
    assert vote.answer == "A"
    assert vote.invalid == 3
    assert vote.agreement == pytest.approx(5 / 8)


def test_model_switch_with_all_invalid_answers_gives_no_answer() -> None:
    groups = [samples("best", None, ""), samples("second", "boom")]
    vote = model_switch(groups, exploding)
    assert vote.answer is None
    assert vote.agreement == 0.0
    assert vote.invalid == 3
    assert vote.models_used == ("best", "second")


def test_model_switch_skips_empty_groups() -> None:
    vote = model_switch([[], samples("second", "A")], normalise, threshold=0.0)
    assert vote.answer == "A"
    assert vote.models_used == ("second",)
    assert model_switch([], normalise).answer is None


def test_model_switch_rejects_bad_thresholds_and_mixed_groups() -> None:
    with pytest.raises(ValueError, match="threshold"):
        model_switch([samples("m", "A")], normalise, threshold=1.5)
    with pytest.raises(ValueError, match="one model"):
        model_switch([samples("a", "A") + samples("b", "A")], normalise)


def test_votes_are_deterministic_under_repeated_calls() -> None:
    groups = [samples("best", "C", "A", r"\frac{1}{2}", None), samples("second", "A", "1/2", "C", "boom")]
    flat = [s for group in groups for s in group]
    first_switch = model_switch(groups, exploding, threshold=0.8)
    first_majority = majority_vote(flat, exploding)
    for _ in range(20):
        assert model_switch(groups, exploding, threshold=0.8) == first_switch
        assert majority_vote(flat, exploding) == first_majority
    assert first_majority.answer == "C"
    assert first_majority.tally == (("C", 2), ("A", 2), ("1/2", 2))


def test_the_registry_lists_the_rules_with_their_metadata() -> None:
    assert set(VOTING_RULES) >= {"majority_vote", "self_consistency", "model_switch"}
    for name, rule in VOTING_RULES.items():
        assert isinstance(rule, VotingRule)
        assert rule.name == name
        assert rule.description
    assert VOTING_RULES["majority_vote"].function is majority_vote
    assert VOTING_RULES["self_consistency"].function is self_consistency
    assert VOTING_RULES["model_switch"].function is model_switch
    assert VOTING_RULES["model_switch"].grouped is True
    assert VOTING_RULES["self_consistency"].grouped is False
    assert VOTING_RULES["majority_vote"].grouped is False
    assert "threshold" in VOTING_RULES["model_switch"].description


def test_registered_rules_are_callable_by_name() -> None:
    groups = [samples("best", "B", "(b)")]
    assert VOTING_RULES["model_switch"](groups, normalise, threshold=0.5).answer == "B"
    assert VOTING_RULES["self_consistency"](groups[0], normalise).answer == "B"


def test_registering_a_name_twice_is_refused() -> None:
    with pytest.raises(ValueError, match="already registered"):
        register_voting_rule("majority_vote", description="again")(majority_vote)
