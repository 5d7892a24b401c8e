"""Serve one query: pick the cluster and the models (``RoutingTable``), then sample, vote and fall back (``answer``).

Pure Python: the Django service loads a snapshot into a ``RoutingTable`` once per process, embeds the query,
and passes in callables that talk to the model servers. Nothing here knows about HTTP or the database.

Routing order. The candidates of a query are the snapshot's team ordered by their estimate in the nearest
cluster (ties: overall mean, then team order), followed by the rest of the profiled pool in the same order,
which only ever answer as a last resort when every team member failed or was skipped.

Fallback. A candidate is *skipped* when it cannot be called at all (no endpoint, deactivated, its circuit is
open: ``availability`` says why); it *fails* when it was called and raised ``GenerationError``. Either way the
next candidate answers. ``fallback`` is True when a failure or an open circuit, not a static skip such as a
missing endpoint, moved the answer away from a candidate ranked above the one that answered.
"""
from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

import numpy as np
from numpy.typing import NDArray

from avengers_web.core.registry import Registry
from evaluation.core.generation import CircuitOpenError, Completion, GenerationError
from routing.core.clustering import normalise
from routing.core.router import ClusterRouter, Router, RowRanker
from routing.core.voting import Normaliser, Sample, Vote, answer_key, majority_vote, model_switch



@dataclass(frozen=True)
class Strategy:
    """How the service answers a routed query: how many samples, whether to consult the next model, how to vote.

    ``vote`` takes the samples grouped by model in routing order, the normaliser and the model-switch threshold.
    """

    name: str
    label: str  # as the playground lists it
    description: str  # what it does, in a few words
    vote: Callable[[Sequence[Sequence[Sample]], Normaliser, float], Vote]
    one_sample: bool = False  # one sample whatever the request asks
    consults_next: bool = False  # while the vote's agreement is below the threshold, the next model adds its samples


# The strategies by name, in the order the API lists them: a new one is one register_strategy call here.
STRATEGIES: Registry[Strategy] = Registry("strategy")


def register_strategy(strategy: Strategy) -> Strategy:
    return STRATEGIES.add(strategy.name, strategy)


def _vote_first_model(groups: Sequence[Sequence[Sample]], normalise: Normaliser, threshold: float) -> Vote:
    return majority_vote(groups[0], normalise)


def _vote_switching(groups: Sequence[Sequence[Sample]], normalise: Normaliser, threshold: float) -> Vote:
    return model_switch(groups, normalise, threshold=threshold)


register_strategy(Strategy("direct", "direct", "its one answer", _vote_first_model, one_sample=True))
register_strategy(Strategy("self_consistency", "self-consistency", "the best model's samples are voted on",
                           _vote_first_model))
register_strategy(Strategy("model_switch", "model switch", "the next model too when they disagree",
                           _vote_switching, consults_next=True))


@dataclass(frozen=True)
class Candidate:
    model: str
    score: float | None  # the model's estimate in the chosen cluster; None where it has no profile there
    rank: int  # 1-based position in routing order
    in_team: bool


@dataclass(frozen=True)
class Route:
    """Where a query goes: the nearest cluster, the clusters after it, and the models in routing order."""

    cluster: int
    similarity: float
    runner_ups: tuple[tuple[int, float], ...]
    candidates: tuple[Candidate, ...]
    category: str  # the dataset that dominates the cluster's train queries
    task_type: str  # the task type most of the cluster's train queries have ("" when unknown)


@dataclass(frozen=True)
class RoutingTable:
    """A snapshot in memory: unit centroids, the team, and the snapshot's fitted router.

    ``router`` is the registry router the snapshot chose and fitted (``routing.core.router``); it scores the
    models of every query. Without one (or with the paper's ``ClusterRouter``) a query's scores are its nearest
    cluster's row of ``estimates``, and each cluster's candidates are computed once. The centroids also give
    every route its nearest cluster, the runner-ups, and the cluster's category and task type for the log.
    """

    centroids: NDArray[np.float32]  # (k, d), unit rows
    models: tuple[str, ...]  # the profiled pool
    estimates: NDArray[np.float64]  # (k, len(models)); NaN where a model has no estimate
    overall: NDArray[np.float64]  # (len(models),) overall mean score on train; NaN when unknown
    team: tuple[str, ...]
    categories: tuple[str, ...] = ()  # per cluster
    task_types: tuple[str, ...] = ()  # per cluster
    router: Router | None = None
    _in_team: NDArray[np.bool_] = field(init=False, repr=False, compare=False)
    _ranker: RowRanker = field(init=False, repr=False, compare=False)
    _per_query: bool = field(init=False, repr=False, compare=False)
    _candidates: tuple[tuple[Candidate, ...], ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        k = self.centroids.shape[0]
        if k == 0:
            raise ValueError("a routing table needs at least one cluster")
        if self.estimates.shape != (k, len(self.models)):
            raise ValueError(f"estimates must be ({k}, {len(self.models)}), got {self.estimates.shape}")
        unknown = [m for m in self.team if m not in self.models]
        if unknown:
            raise ValueError(f"team members without a profile: {', '.join(unknown)}")
        if self.router is not None and tuple(self.router.models) != tuple(self.models):
            raise ValueError("the router must score the table's models, in the table's order")
        object.__setattr__(self, "centroids", normalise(np.asarray(self.centroids, dtype=np.float32)))
        team = set(self.team)
        object.__setattr__(self, "_in_team", np.asarray([m in team for m in self.models], dtype=bool))
        object.__setattr__(self, "_ranker", RowRanker(self.overall, first=self._in_team))
        estimates = self.estimates
        per_query = self.router is not None
        if isinstance(self.router, ClusterRouter) and self.router.clustering.k == k:
            # The paper's router scores a query by its cluster's row: the same table, computed once.
            estimates, per_query = self.router.profiles.estimates, False
            object.__setattr__(self, "estimates", estimates)
        object.__setattr__(self, "_per_query", per_query)
        # Routing order per cluster is fixed by the snapshot when scores depend on the cluster only.
        object.__setattr__(self, "_candidates", () if per_query else tuple(
            self._order(estimates[c]) for c in range(k)))

    def _order(self, scores: NDArray[np.float64]) -> tuple[Candidate, ...]:
        """The candidates for one query's model scores: the team first, then ``rank_models``'s one tie rule."""
        order = self._ranker(scores)  # rank_models' rule, one row
        return tuple(Candidate(model=self.models[j], rank=position + 1, in_team=bool(self._in_team[j]),
                               score=None if np.isnan(scores[j]) else float(scores[j]))
                     for position, j in enumerate(order))

    @property
    def k(self) -> int:
        return int(self.centroids.shape[0])

    @property
    def dimensions(self) -> int:
        return int(self.centroids.shape[1])

    def route(self, embedding: NDArray[np.floating], *, runner_ups: int = 3) -> Route:
        """Return the route of one query embedding (d,)."""
        vector = np.asarray(embedding, dtype=np.float32).reshape(-1)
        if vector.shape[0] != self.dimensions:
            raise ValueError(f"the embedding has {vector.shape[0]} dimensions, the snapshot's centroids "
                             f"{self.dimensions}")
        norm = float(np.linalg.norm(vector))
        similarities = self.centroids @ (vector / norm if norm > 0 else vector)
        width = min(runner_ups + 1, self.k)
        nearest = np.argpartition(-similarities, width - 1)[:width] if width < self.k else np.arange(self.k)
        nearest = nearest[np.lexsort((nearest, -similarities[nearest]))]
        cluster = int(nearest[0])
        if self._per_query:
            assert self.router is not None
            candidates = self._order(np.asarray(self.router.model_scores(vector[None, :])[0], dtype=np.float64))
        else:
            candidates = self._candidates[cluster]
        return Route(
            cluster=cluster,
            similarity=float(similarities[cluster]),
            runner_ups=tuple((int(c), float(similarities[c])) for c in nearest[1:]),
            candidates=candidates,
            category=self.categories[cluster] if self.categories else "",
            task_type=self.task_types[cluster] if self.task_types else "",
        )


# --- answering -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SampleRecord:
    """One generated sample and what voting made of it."""

    model: str
    index: int
    text: str
    answer: str | None  # extracted
    key: str | None  # normalised; None = invalid vote
    finish_reason: str


@dataclass(frozen=True)
class Failure:
    model: str
    kind: str  # a GenerationError kind, "circuit_open", or "deadline"
    message: str


@dataclass(frozen=True)
class Skip:
    model: str
    reason: str


@dataclass
class Outcome:
    """Everything that happened while answering one query."""

    strategy: str
    vote: Vote | None = None
    samples: list[SampleRecord] = field(default_factory=list)
    models_used: list[str] = field(default_factory=list)
    failures: list[Failure] = field(default_factory=list)
    skipped: list[Skip] = field(default_factory=list)
    fallback: bool = False
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    generate_ms: float = 0.0
    vote_ms: float = 0.0

    @property
    def winner(self) -> SampleRecord | None:
        """The sample whose text is returned: the first one that voted for the winning answer.

        With no valid vote at all (nothing could be extracted), the first sample of the best model that
        answered is returned, so that the caller still gets the model's text.
        """
        if self.vote is not None and self.vote.representative is not None:
            rep = self.vote.representative
            for record in self.samples:
                if record.model == rep.model and record.index == rep.index:
                    return record
        return self.samples[0] if self.samples else None

    @property
    def answered_by(self) -> str:
        winner = self.winner
        return winner.model if winner is not None else ""


class NoModelAnswered(Exception):
    """Every candidate was skipped or failed; ``outcome`` says which and why."""

    def __init__(self, outcome: Outcome) -> None:
        self.outcome = outcome
        parts = [f"{s.model}: {s.reason}" for s in outcome.skipped] + \
                [f"{f.model}: {f.message}" for f in outcome.failures]
        super().__init__("no model could answer" + (" (" + "; ".join(parts) + ")" if parts else
                                                      " (the snapshot has no models)"))


# availability(model) -> None when it can be called, else why not ("no endpoint", "circuit open for 12 s")
Availability = Callable[[str], str | None]
# call(model, n, timeout_s) -> a Completion with n choices; raises GenerationError
Call = Callable[[str, int, float], Completion]
Extract = Callable[[str], str | None]


_T = TypeVar("_T")


def _in_order(
    candidates: Sequence[str],
    outcome: Outcome,
    *,
    attempt: Callable[[str, float], _T],
    availability: Availability,
    deadline: float,
    clock: Callable[[], float],
) -> Iterator[tuple[str, _T]]:
    """Yield (model, what ``attempt`` returned) for each candidate, in order, that could be asked and answered.

    Skips (``availability`` says why not, or the circuit opened) and failures (GenerationError) go into
    ``outcome``; one that comes before any model has answered is a fallback, unless it is a static skip such as
    a missing endpoint. No attempt starts after ``deadline``; each gets the time left. The caller stops
    iterating when it has what it needs.
    """
    for model in candidates:
        answered = bool(outcome.models_used)
        why_not = availability(model)
        if why_not is not None:
            outcome.skipped.append(Skip(model, why_not))
            outcome.fallback = outcome.fallback or (not answered and why_not.startswith("circuit open"))
            continue
        left = deadline - clock()
        if left <= 0:
            outcome.failures.append(Failure(model, "deadline", "the request's deadline passed before this model "
                                                               "could be asked"))
            return
        try:
            result = attempt(model, left)
        except CircuitOpenError as error:
            outcome.skipped.append(Skip(model, f"circuit open: {error.message}"))
            outcome.fallback = outcome.fallback or not answered
            continue
        except GenerationError as error:
            outcome.failures.append(Failure(model, error.kind, error.message))
            outcome.fallback = outcome.fallback or not answered
            continue
        outcome.models_used.append(model)
        yield model, result


def answer(
    candidates: Sequence[str],
    *,
    strategy: str,
    samples: int,
    call: Call,
    availability: Availability,
    extract: Extract,
    normalise: Normaliser,
    deadline: float,
    threshold: float = 0.5,
    clock: Callable[[], float] = time.monotonic,
) -> Outcome:
    """Answer with the candidates in routing order; raise NoModelAnswered when none could.

    The strategy (``STRATEGIES``) says how:

    * ``direct``: one sample of the first model that answers.
    * ``self_consistency``: ``samples`` samples of the first model that answers; majority vote.
    * ``model_switch``: ``samples`` samples of the first model that answers; while the vote's agreement is
      below ``threshold``, the next model that answers adds its samples and the vote is taken over all.

    ``deadline`` is a ``clock()`` time: no call starts after it, and each call gets the time left as its timeout.
    """
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown strategy {strategy!r}; expected one of {', '.join(STRATEGIES)}")
    if samples < 1:
        raise ValueError("samples must be at least 1")
    how = STRATEGIES[strategy]
    n = 1 if how.one_sample else samples
    outcome = Outcome(strategy=strategy)
    groups: list[list[Sample]] = []
    started = clock()
    for model, completion in _in_order(candidates, outcome, attempt=lambda model, left: call(model, n, left),
                                       availability=availability, deadline=deadline, clock=clock):
        group = []
        for index, choice in enumerate(completion.choices):
            extracted = extract(choice.text)
            outcome.samples.append(SampleRecord(model, index, choice.text, extracted,
                                                answer_key(extracted, normalise), choice.finish_reason))
            group.append(Sample(model=model, answer=extracted, index=index))
        groups.append(group)
        if completion.prompt_tokens is not None:
            outcome.prompt_tokens = (outcome.prompt_tokens or 0) + completion.prompt_tokens
        if completion.completion_tokens is not None:
            outcome.completion_tokens = (outcome.completion_tokens or 0) + completion.completion_tokens
        if not how.consults_next or majority_vote([s for g in groups for s in g], normalise).agreement >= threshold:
            break
    outcome.generate_ms = (clock() - started) * 1000
    if not groups:
        raise NoModelAnswered(outcome)
    mark = clock()
    outcome.vote = how.vote(groups, normalise, threshold)
    outcome.vote_ms = (clock() - mark) * 1000
    return outcome


def first_stream(
    candidates: Sequence[str],
    *,
    open_stream: Callable[[str, float], Iterator[str]],
    availability: Availability,
    deadline: float,
    clock: Callable[[], float] = time.monotonic,
) -> tuple[str, str, Iterator[str], Outcome]:
    """Open a token stream from the first candidate that sends its first piece before failing.

    Return (model, first piece, the rest of the stream, outcome with skips and failures). A model that fails
    before its first byte is a fallback; once a byte has been sent the stream belongs to that model.
    """
    outcome = Outcome(strategy="direct")

    def attempt(model: str, left: float) -> tuple[str, Iterator[str]]:
        stream = open_stream(model, left)
        return next(stream, None) or "", stream

    for model, (first, stream) in _in_order(candidates, outcome, attempt=attempt, availability=availability,
                                            deadline=deadline, clock=clock):
        return model, first, stream, outcome
    raise NoModelAnswered(outcome)
