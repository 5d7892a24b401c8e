"""Voting and grading share one normaliser: answers that grade alike vote together."""
from __future__ import annotations

from evaluation.core.grading import extract_answer, grade, normaliser
from routing.core.voting import Sample, majority_vote, model_switch


def samples(model: str, responses: list[str]) -> list[Sample]:
    return [Sample(model=model, answer=extract_answer(text).answer, index=i) for i, text in enumerate(responses)]


def test_maths_answers_that_differ_only_in_form_vote_together() -> None:
    votes = samples("m", ["so \\boxed{0.5}", "Answer: \\frac{1}{2}", "\\boxed{\\dfrac{1}{2}}", "\\boxed{2}", "50%"])
    vote = majority_vote(votes, normaliser("math"))
    assert vote.tally[0][1] >= 3 and vote.tally[0][0] == normaliser("math")("1/2")
    # The winner grades right against the gold exactly when its key equals the gold's key.
    assert grade("math", votes[0].answer or "", "\\frac{1}{2}").correct


def test_letters_in_any_dress_vote_for_one_option() -> None:
    votes = samples("m", ["Answer: (B)", "**b**", "The answer is B.", "Answer: C"])
    vote = majority_vote(votes, normaliser("mcq"))
    assert vote.answer == "B" and vote.tally == (("B", 3), ("C", 1))


def test_model_switch_pools_equivalent_answers_across_models() -> None:
    first = samples("best", ["\\boxed{1/2}", "\\boxed{3}"])
    second = samples("next", ["\\boxed{0.5}", "\\boxed{\\frac12}"])
    vote = model_switch([first, second], normaliser("math"), threshold=0.6)
    assert vote.models_used == ("best", "next") and vote.tally[0][1] == 3
