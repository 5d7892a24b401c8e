"""Vote over sampled answers: majority vote, self-consistency, and model switch.

Rules every voting rule here follows:

1. Answers are compared by ``normalise(answer)``, never raw. A normaliser that maps ``1/2``
   and ``\\frac{1}{2}`` to the same key makes them vote together; so do ``B`` and ``(b)``.
2. A sample whose answer is None or blank, or whose normaliser returns None or "", is invalid:
   it never wins and is counted in ``Vote.invalid``. It still counts in the denominator of
   ``agreement`` (winner votes / all samples considered), so many failed extractions lower
   agreement and make ``model_switch`` consult the next model.
3. A normaliser that raises counts that sample as invalid. Nothing is logged: one odd answer
   must not abort the vote, and the invalid count already reports it.
4. Ties break deterministically: among the answers with the most votes, the one whose first
   vote came earliest in routing order (model order, then sample order as given) wins. The
   router ranks models best first, so the earliest vote comes from the higher-ranked model,
   and that model's opinion is the better tie-breaker than, say, alphabetical order.
   The ``tally`` is sorted the same way: votes descending, then earliest first vote.

Callers list samples in routing order: best model first, each model's samples by ``index``.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from avengers_web.core.registry import Decorated, Registry

Normaliser = Callable[[str], str | None]  # raw extracted answer -> canonical key; None/"" = unparseable


@dataclass(frozen=True)
class Sample:
    """One generated answer of one model."""

    model: str
    answer: str | None  # the extracted answer before normalisation; None when extraction failed
    index: int = 0  # sample index within its model


@dataclass(frozen=True)
class Vote:
    """The outcome of a vote and how it was reached."""

    answer: str | None  # canonical key of the winner; None when no sample had a valid answer
    representative: Sample | None  # the first sample, in the given order, that voted for the winner
    tally: tuple[tuple[str, int], ...]  # canonical answer -> votes; votes desc, then earliest first vote
    agreement: float  # winner votes / samples considered; 0.0 when none
    samples_used: int
    models_used: tuple[str, ...]  # in order of first appearance
    invalid: int  # samples without a valid answer


VotingFunction = Callable[..., Vote]


@dataclass(frozen=True)
class VotingRule:
    """A registered voting rule and what a caller needs to know to call it."""

    name: str
    description: str
    grouped: bool  # True: takes one sequence of samples per model, in routing order
    function: VotingFunction

    def __call__(self, *args: Any, **kwargs: Any) -> Vote:
        """Run the rule."""
        return self.function(*args, **kwargs)


VOTING_RULES: Registry[VotingRule] = Registry("voting rule")


def register_voting_rule(name: str, *, description: str,
                         grouped: bool = False) -> Callable[[Decorated], Decorated]:
    """Register the decorated function in ``VOTING_RULES`` under ``name``."""
    return VOTING_RULES.registering(name, lambda function: VotingRule(name=name, description=description,
                                                                      grouped=grouped, function=function))


def answer_key(answer: str | None, normalise: Normaliser) -> str | None:
    """Return the canonical key of an extracted answer, or None when it is no valid vote."""
    if answer is None or not answer.strip():
        return None
    try:
        key = normalise(answer)
    except Exception:
        # One odd answer must not abort the vote; the invalid count reports it.
        return None
    return key if isinstance(key, str) and key else None


def _key(sample: Sample, normalise: Normaliser) -> str | None:
    """Return the sample's canonical answer, or None when it has no valid one."""
    return answer_key(sample.answer, normalise)


@register_voting_rule(
    "majority_vote",
    description="Most common normalised answer over all samples given; ties go to the earliest first vote.",
)
def majority_vote(samples: Sequence[Sample], normalise: Normaliser) -> Vote:
    """Return the most common normalised answer among ``samples``."""
    votes: dict[str, int] = {}  # insertion order is the order of first votes
    first: dict[str, Sample] = {}
    models: dict[str, None] = {}
    invalid = 0
    for sample in samples:
        models.setdefault(sample.model)
        key = _key(sample, normalise)
        if key is None:
            invalid += 1
            continue
        votes[key] = votes.get(key, 0) + 1
        first.setdefault(key, sample)
    # sorted() is stable, so equal counts keep the order of their first vote.
    tally = tuple(sorted(votes.items(), key=lambda item: -item[1]))
    winner = tally[0][0] if tally else None
    return Vote(
        answer=winner,
        representative=first[winner] if winner is not None else None,
        tally=tally,
        agreement=tally[0][1] / len(samples) if tally else 0.0,
        samples_used=len(samples),
        models_used=tuple(models),
        invalid=invalid,
    )


@register_voting_rule(
    "self_consistency",
    description="Majority vote over several samples of one model.",
)
def self_consistency(samples: Sequence[Sample], normalise: Normaliser) -> Vote:
    """Return the majority vote over samples of one model; raise ValueError if several models."""
    models = sorted({sample.model for sample in samples})
    if len(models) > 1:
        raise ValueError(f"self_consistency takes samples of one model, got {', '.join(models)}")
    return majority_vote(samples, normalise)


@register_voting_rule(
    "model_switch",
    description=(
        "Vote over the best model's samples; while agreement is below the threshold, "
        "add the next model's samples and vote over all samples so far."
    ),
    grouped=True,
)
def model_switch(
    samples_by_model: Sequence[Sequence[Sample]], normalise: Normaliser, *, threshold: float = 0.5
) -> Vote:
    """Return the vote after consulting models in routing order until agreement reaches ``threshold``.

    1. Vote over the first (best) model's samples.
    2. While agreement < threshold and models remain, add the next model's samples and
       vote again over all samples so far.
    3. Return the last vote; its ``models_used`` says how far it went.
    """
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"threshold must be in [0, 1], got {threshold}")
    for group in samples_by_model:
        if len({sample.model for sample in group}) > 1:
            raise ValueError("each group of samples_by_model must hold the samples of one model")
    pooled: list[Sample] = []
    vote = majority_vote(pooled, normalise)
    for group in samples_by_model:
        pooled.extend(group)
        vote = majority_vote(pooled, normalise)
        # An empty group cannot have raised agreement, so it never ends the search by itself.
        if group and vote.agreement >= threshold:
            break
    return vote
