"""The routing service: route a query through a router snapshot, answer it with the team, log the decision.

Each entry point takes one ``Request``, whose bounds were checked when it was made, and returns a dataclass that
the API, the OpenAI-compatible API and the dashboard each turn into their own format:

* ``route`` -> ``Decision``: the decision only, no generation.
* ``answer`` -> ``Answer``: route, sample, extract, vote.
* ``stream_direct`` -> ``Stream``: route and stream the first model's tokens (``stream: true``, strategy direct).

Every call, successful or not, hands a ``RoutingDecision`` row to ``decision_log``, which writes it after the
response in bulk.
"""
from __future__ import annotations

import hashlib
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from django.conf import settings
from django.core.exceptions import ValidationError
from django.utils import timezone

from evaluation import providers
from evaluation.core.generation import ChatRequest, Completion, GenerationError, RetryPolicy
from evaluation.core.grading import TASK_TYPES, extract_answer, is_free_text, normaliser
from evaluation.core.prompts import render, resolve_template
from evaluation.models import LanguageModel
from routing import metrics
from routing.core.dispatch import (
    STRATEGIES,
    Failure,
    NoModelAnswered,
    Outcome,
    Route,
    SampleRecord,
    Skip,
    answer as answer_with,
    first_stream,
)
from routing.core.voting import Vote, answer_key
from routing.models import CATEGORY_CHARS, RoutingDecision
from routing.serving import ServingError, decision_log, tables
from routing.serving.embedding import embed_query
from routing.serving.tables import Served

# A routed call makes one attempt: a failure moves on to the next model instead of backing off.
_ONE_ATTEMPT = RetryPolicy(max_attempts=1)


@dataclass(frozen=True)
class Request:
    """One query to serve. Making one checks it against the server's limits, the one place they are checked.

    Parameters out of bounds raise Django's ValidationError naming each (the API answers 400 naming the fields, a
    form shows each on its field); an empty query raises ServingError 400, one over AVENGERS_MAX_QUERY_CHARS
    ServingError 413.
    """

    query: str
    endpoint: str
    strategy: str = "self_consistency"
    samples: int = 10
    temperature: float = 0.7
    task_type: str | None = None
    category: str = ""
    snapshot_id: int | None = None
    max_tokens: int | None = None
    messages: tuple[Mapping[str, str], ...] | None = None  # chat: sent as given instead of a rendered prompt
    timeout_s: float | None = None
    user: Any = None
    token_prefix: str = ""

    def __post_init__(self) -> None:
        # Every parameter out of bounds, in the order the API declares them, and before the query's own faults, as
        # when the serializers checked the parameters.
        refused: dict[str, str] = {}
        if self.strategy not in STRATEGIES:
            refused["strategy"] = f"{self.strategy!r} is not one of {', '.join(STRATEGIES)}."
        if self.samples > settings.MAX_SAMPLES:
            refused["samples"] = f"at most {settings.MAX_SAMPLES} samples"
        elif self.samples < 1:
            refused["samples"] = "at least 1"
        if not 0.0 <= self.temperature <= 2.0:
            refused["temperature"] = "must be between 0 and 2."
        if self.task_type not in (None, "", *TASK_TYPES):
            refused["task_type"] = f"{self.task_type!r} is not one of {', '.join(TASK_TYPES)}."
        if self.max_tokens is not None and self.max_tokens > settings.MAX_ANSWER_TOKENS:
            refused["max_tokens"] = f"at most {settings.MAX_ANSWER_TOKENS}"
        elif self.max_tokens is not None and self.max_tokens < 1:
            refused["max_tokens"] = "at least 1"
        if self.timeout_s is not None and self.timeout_s > settings.ROUTE_DEADLINE_S:
            refused["timeout_s"] = f"at most {settings.ROUTE_DEADLINE_S:g}"
        elif self.timeout_s is not None and self.timeout_s <= 0:
            refused["timeout_s"] = "must be more than 0."
        if refused:
            raise ValidationError(refused)
        if not isinstance(self.query, str) or not self.query.strip():
            raise ServingError(400, "invalid", "query: the query is empty.")
        if len(self.query) > settings.MAX_QUERY_CHARS:
            raise ServingError(413, "query_too_long", f"query: {len(self.query)} characters; the most this server "
                                                      f"takes is {settings.MAX_QUERY_CHARS} (AVENGERS_MAX_QUERY_CHARS).")


@dataclass(frozen=True)
class RoutedCandidate:
    """A model in routing order, and why it was passed over, if it was."""

    model: str
    score: float | None  # its estimate in the chosen cluster; None where it has no profile there
    rank: int
    in_team: bool
    skipped: str | None = None  # not called: why
    failed: str | None = None  # called, and failed: why

    def as_json(self) -> dict[str, Any]:
        """The candidate as the API answers it and the decision log keeps it (why only where there is a why)."""
        row: dict[str, Any] = {"model": self.model, "score": self.score, "rank": self.rank, "in_team": self.in_team}
        if self.skipped is not None:
            row["skipped"] = self.skipped
        if self.failed is not None:
            row["failed"] = self.failed
        return row


@dataclass(frozen=True)
class Decision:
    """How a query was routed: the snapshot, the nearest clusters, the candidates, the model chosen."""

    id: str  # the request's id, as in the decision log
    snapshot: Served
    route: Route
    task_type: str  # the request's, else the cluster's
    candidates: tuple[RoutedCandidate, ...]
    chosen: str  # the model that answered (route: the first that can be called); "" if none
    timings_ms: Mapping[str, float]  # embed, decide (route: and total)


@dataclass(frozen=True)
class Answer:
    """A routed, sampled and voted answer."""

    id: str
    answer: str  # the final answer: the vote's key, or for free text the winning sample's answer as written
    answer_key: str | None  # the winning normalised answer; None when no sample had one
    response: str  # the full text of the winning sample
    model: str  # the model that wrote it
    strategy: str
    vote: Vote
    samples: tuple[SampleRecord, ...]
    fallback: bool
    failures: tuple[Failure, ...]
    prompt_tokens: int | None
    completion_tokens: int | None
    timings_ms: Mapping[str, float]
    decision: Decision


@dataclass(frozen=True)
class Stream:
    """A started token stream: the decision so far and the pieces of text still to come."""

    decision: Decision
    model: str
    fallback: bool
    pieces: Iterator[str]


# ------------------------------------------------------------------------------------------- models


def serving_client(model: LanguageModel) -> providers.OpenAIChatClient:
    """Return this process's serving client of the model's endpoint.

    One attempt per call, at most AVENGERS_ROUTE_MODEL_TIMEOUT_S per model (so that a hung server leaves time for
    the next), the endpoint's ``max_concurrency``, and the circuit breaker that evaluation shares for the same
    endpoint, so that both agree on which servers are down.
    """
    return providers.client_for(base_url=model.base_url, api_key=model.api_key,
                                max_concurrency=model.max_concurrency, timeout_s=settings.ROUTE_MODEL_TIMEOUT_S,
                                retry=_ONE_ATTEMPT, reset_after_s=settings.CIRCUIT_RESET_S)


def _availability(models: Mapping[str, LanguageModel]) -> Callable[[str], str | None]:
    def availability(name: str) -> str | None:
        model = models.get(name)
        if model is None:
            return "no longer registered"
        if not model.base_url:
            return "no endpoint (imported results only)"
        if not model.is_active:
            return "deactivated"
        breaker = serving_client(model).breaker
        if breaker.state == "open" and breaker.retry_in_s() > 0:
            return f"circuit open: the endpoint failed repeatedly; retried in {breaker.retry_in_s():.0f} s"
        return None

    return availability


# ------------------------------------------------------------------------------------------- tracing


def new_request_id() -> str:
    return "dec_" + uuid.uuid4().hex[:24]


def _candidates(route: Route, outcome: Outcome | None) -> tuple[RoutedCandidate, ...]:
    skipped = {s.model: s.reason for s in outcome.skipped} if outcome else {}
    failed = {f.model: f.message for f in outcome.failures} if outcome else {}
    return tuple(RoutedCandidate(c.model, c.score, c.rank, c.in_team, skipped.get(c.model), failed.get(c.model))
                 for c in route.candidates)


@dataclass
class _Trace:
    """The parts of a decision row gathered while serving."""

    request: Request
    request_id: str
    started: float
    served: Served | None = None
    route: Route | None = None
    chosen: str = ""
    timings: dict[str, float] = field(default_factory=dict)

    def decision(self, outcome: Outcome, *, task_type: str = "", total: bool = False) -> Decision:
        assert self.served is not None and self.route is not None
        timings = {k: v for k, v in self.timings.items() if k in ("embed", "decide")}
        if total:
            timings["total"] = round((time.perf_counter() - self.started) * 1000, 3)
        return Decision(id=self.request_id, snapshot=self.served, route=self.route,
                        task_type=task_type or self.route.task_type, candidates=_candidates(self.route, outcome),
                        chosen=self.chosen, timings_ms=timings)

    def row(self, *, outcome: Outcome | None = None, status: int = 200, error: str = "", task_type: str = "",
            final_answer: str = "", extra_ms: Mapping[str, float] | None = None,
            candidates: tuple[RoutedCandidate, ...] | None = None) -> RoutingDecision:
        req = self.request
        timings = dict(self.timings)
        timings.update(extra_ms or {})
        if outcome is not None:
            timings.setdefault("generate", round(outcome.generate_ms, 3))
            timings.setdefault("vote", round(outcome.vote_ms, 3))
        total = (time.perf_counter() - self.started) * 1000
        timings["total"] = round(total, 3)
        route = self.route
        if candidates is None and route is not None:
            candidates = _candidates(route, outcome)
        vote = outcome.vote if outcome is not None else None
        row = RoutingDecision(
            request_id=self.request_id,
            created_at=timezone.now(),
            user=req.user if req.user is not None and getattr(req.user, "is_authenticated", False) else None,
            token_prefix=req.token_prefix,
            endpoint=req.endpoint,
            query=req.query if settings.LOG_QUERY_TEXT else "",
            query_sha256=hashlib.sha256(req.query.encode("utf-8", "replace")).hexdigest(),
            query_chars=len(req.query),
            snapshot_id=self.served.id if self.served else None,
            cluster=route.cluster if route else None,
            similarity=route.similarity if route else None,
            category=(req.category or (route.category if route else ""))[:CATEGORY_CHARS],
            runner_ups=[{"cluster": c, "similarity": round(s, 6)} for c, s in route.runner_ups] if route else [],
            candidates=[c.as_json() for c in candidates] if candidates is not None else [],
            strategy=req.strategy if req.endpoint != RoutingDecision.Endpoint.ROUTE else "",
            task_type=task_type,
            chosen_model=self.chosen,
            models_used=list(outcome.models_used) if outcome else [],
            fallback=bool(outcome and outcome.fallback),
            failures=[{"model": f.model, "kind": f.kind, "message": f.message} for f in outcome.failures]
            if outcome else [],
            samples=[{"model": s.model, "index": s.index, "text": s.text, "answer": s.answer, "key": s.key,
                      "finish_reason": s.finish_reason} for s in outcome.samples] if outcome else [],
            tally=[[a, v] for a, v in vote.tally] if vote else [],
            final_answer=final_answer,
            agreement=vote.agreement if vote else None,
            prompt_tokens=outcome.prompt_tokens if outcome else None,
            completion_tokens=outcome.completion_tokens if outcome else None,
            timings_ms=timings,
            total_ms=total,
            status_code=status,
            error=error,
        )
        metrics.observe_decision(row)  # every request, served or failed, makes exactly one row
        return row


def _fail(trace: _Trace, error: ServingError, outcome: Outcome | None = None) -> ServingError:
    """Log a failed request and return the error to raise."""
    decision_log.submit(trace.row(outcome=outcome, status=error.status, error=error.message))
    return error


def _start(request: Request) -> tuple[_Trace, Route, dict[str, LanguageModel]]:
    """Embed and route (a failure is logged and raised); return the trace, the route, its models."""
    trace = _Trace(request=request, request_id=new_request_id(), started=time.perf_counter())
    try:
        route_ = _route(trace)
    except ServingError as error:
        raise _fail(trace, error) from None
    return trace, route_, tables.language_models([c.model for c in route_.candidates])


def _route(trace: _Trace) -> Route:
    trace.served = tables.served(trace.request.snapshot_id)
    mark = time.perf_counter()
    vector = embed_query(trace.served.embedder, trace.request.query)
    trace.timings["embed"] = round((time.perf_counter() - mark) * 1000, 3)
    mark = time.perf_counter()
    trace.route = trace.served.table.route(vector, runner_ups=settings.ROUTING_RUNNER_UPS)
    trace.timings["decide"] = round((time.perf_counter() - mark) * 1000, 3)
    return trace.route


# ------------------------------------------------------------------------------------------- entry points


def route(request: Request) -> Decision:
    """Return the routing decision for ``request.query``: cluster, runner-ups, candidates, the chosen model."""
    trace, route_, models = _start(request)
    availability = _availability(models)
    outcome = Outcome(strategy="")
    for candidate in route_.candidates:
        why_not = availability(candidate.model)
        if why_not is None:
            trace.chosen = candidate.model
            break
        outcome.skipped.append(Skip(candidate.model, why_not))
    decision = trace.decision(outcome, total=True)
    decision_log.submit(trace.row(outcome=outcome, candidates=decision.candidates))
    return decision


def _task_type(request: Request, route_: Route) -> str:
    return request.task_type or route_.task_type or "qa"


def _messages(request: Request, model: LanguageModel, task_type: str) -> tuple[Mapping[str, str], ...]:
    if request.messages is not None:
        return request.messages
    template = resolve_template(task_type, model.prompt_templates)
    return ({"role": "user", "content": render(template, request.query)},)


def _chat_request(request: Request, model: LanguageModel, task_type: str, n: int) -> ChatRequest:
    max_tokens = request.max_tokens or model.default_params.get("max_tokens") or settings.DEFAULT_ANSWER_TOKENS
    return ChatRequest(model=model.served_model_id or model.name, messages=_messages(request, model, task_type), n=n,
                       temperature=request.temperature, max_tokens=int(max_tokens))


def _deadline(request: Request) -> float:
    return time.monotonic() + (request.timeout_s or settings.ROUTE_DEADLINE_S)


def answer(request: Request) -> Answer:
    """Route, sample, vote; raise ServingError (logged) when no model could answer."""
    trace, route_, models = _start(request)
    task_type = _task_type(request, route_)

    def call(name: str, n: int, timeout_s: float) -> Completion:
        model = models[name]
        return serving_client(model).complete(_chat_request(request, model, task_type, n), timeout_s=timeout_s)

    def extract(text: str) -> str | None:
        return extract_answer(text).answer

    try:
        outcome = answer_with(
            [c.model for c in route_.candidates], strategy=request.strategy, samples=request.samples, call=call,
            availability=_availability(models), extract=extract, normalise=normaliser(task_type),
            deadline=_deadline(request), threshold=settings.MODEL_SWITCH_THRESHOLD,
        )
    except NoModelAnswered as exc:
        raise _fail(trace, ServingError(503, "no_model_available", str(exc)), exc.outcome) from None
    winner = outcome.winner
    assert winner is not None and outcome.vote is not None
    trace.chosen = winner.model
    # Where the normalised key is the canonical answer (a number, a letter, a label, a literal) it is the answer;
    # for free text (graders registered free_text: qa, code) the winning sample's answer as the model wrote it
    # ("Mars", not the key "mars").
    if is_free_text(task_type) and winner.answer is not None:
        final = winner.answer
    else:
        final = outcome.vote.answer if outcome.vote.answer is not None else (winner.answer or "")
    decision = trace.decision(outcome, task_type=task_type)
    decision_log.submit(trace.row(outcome=outcome, task_type=task_type, final_answer=final,
                                  candidates=decision.candidates))
    timings = dict(trace.timings)
    timings.update(generate=round(outcome.generate_ms, 3), vote=round(outcome.vote_ms, 3),
                   total=round((time.perf_counter() - trace.started) * 1000, 3))
    return Answer(id=trace.request_id, answer=final, answer_key=outcome.vote.answer, response=winner.text,
                  model=winner.model, strategy=request.strategy, vote=outcome.vote, samples=tuple(outcome.samples),
                  fallback=outcome.fallback, failures=tuple(outcome.failures), prompt_tokens=outcome.prompt_tokens,
                  completion_tokens=outcome.completion_tokens, timings_ms=timings, decision=decision)


def stream_direct(request: Request) -> Stream:
    """Route and start streaming the first model that answers; the decision is logged when the stream ends."""
    trace, route_, models = _start(request)
    task_type = _task_type(request, route_)

    def open_stream(name: str, timeout_s: float) -> Iterator[str]:
        model = models[name]
        return serving_client(model).stream(_chat_request(request, model, task_type, 1), timeout_s=timeout_s)

    mark = time.perf_counter()
    try:
        model, first, rest, outcome = first_stream(
            [c.model for c in route_.candidates], open_stream=open_stream, availability=_availability(models),
            deadline=_deadline(request))
    except NoModelAnswered as exc:
        raise _fail(trace, ServingError(503, "no_model_available", str(exc)), exc.outcome) from None
    first_byte_ms = round((time.perf_counter() - mark) * 1000, 3)
    trace.chosen = model
    decision = trace.decision(outcome, task_type=task_type)

    def pieces() -> Iterator[str]:
        text = [first]
        error = ""
        try:
            if first:
                yield first
            for piece in rest:
                text.append(piece)
                yield piece
        except GenerationError as exc:
            error = f"the stream from {model} broke: {exc.message}"
            raise
        finally:
            full = "".join(text)
            extracted = extract_answer(full).answer
            outcome.samples.append(SampleRecord(model, 0, full, extracted, answer_key(extracted, normaliser(task_type)),
                                                "error" if error else "stop"))
            outcome.generate_ms = (time.perf_counter() - mark) * 1000
            decision_log.submit(trace.row(outcome=outcome, task_type=task_type, final_answer=extracted or "",
                                          error=error, status=502 if error else 200,
                                          extra_ms={"first_byte": first_byte_ms}))

    return Stream(decision=decision, model=model, fallback=outcome.fallback, pieces=pieces())


def warm_up() -> Served:
    """Load the active snapshot's routing table and its embedder into this process (GET /readyz calls it)."""
    served = tables.served(None)
    embed_query(served.embedder, "warm-up")
    return served
