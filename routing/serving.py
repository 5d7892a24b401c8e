"""The routing service: route a query through a router snapshot, answer it with the team, log the decision.

One process keeps, for each snapshot it has served, a ``RoutingTable`` in memory (centroids, estimates, the
team), the embedder, and one HTTP client per model endpoint. The (id, revision) of the snapshot a request is
served from is read at most every ``AVENGERS_ROUTING_REFRESH_S`` seconds, and a table older than that revision
is reloaded, so activating another snapshot, or editing one's label, reaches every process within that time.

Entry points (called by routing.api_serving, the OpenAI-compatible views and the dashboard playground):

* ``route``: the decision only, no generation.
* ``answer``: route, sample, extract, vote; returns the body of POST /api/v1/answer.
* ``stream_direct``: route and stream the first model's tokens (``stream: true`` with the direct strategy).

Every call, successful or not, hands a ``RoutingDecision`` row to ``routing.decision_log``, which writes it after
the response in bulk.
"""
from __future__ import annotations

import gc
import hashlib
import logging
import threading
import time
import uuid
from collections import Counter, OrderedDict
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from django.conf import settings
from django.db.models import Count
from django.utils import timezone

from evaluation import providers
from evaluation.core.generation import ChatRequest, Completion, GenerationError, RetryPolicy
from evaluation.core.grading import TASK_TYPES, extract_answer, is_free_text, normaliser
from evaluation.core.prompts import render, resolve_template
from evaluation.models import LanguageModel
from routing import decision_log, metrics
from routing.core.batching import MicroBatcher
from routing.core.voting import answer_key
from routing.core.embedding import Embedder, get_embedder
from routing.core.serving import (
    STRATEGIES,
    NoModelAnswered,
    Outcome,
    Route,
    RoutingTable,
    SampleRecord,
    Skip,
    answer as answer_with,
    first_stream,
)
from routing.models import (CATEGORY_CHARS, RouterSnapshot, RoutingDecision, SnapshotCluster, SnapshotProfile,
                            SnapshotQuery)

_log = logging.getLogger(__name__)


class ServingError(Exception):
    """A request the service cannot serve: ``status`` is the HTTP status to answer with."""

    def __init__(self, status: int, code: str, message: str, *, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message
        self.retry_after_s = retry_after_s


# ------------------------------------------------------------------------------------------- snapshots


def _keep_loaded() -> None:
    """What was just loaded stays for the life of the process (a routing table, an embedder): take everything
    alive now out of the cyclic garbage collector's reach, as avengers_web.wsgi does at start-up, so that full
    collections stay short (docs/BENCHMARKS.md)."""
    gc.freeze()


@dataclass(frozen=True)
class Served:
    """What a request is served from: the snapshot's id, version and embedder, and its routing table."""

    id: int
    version: int
    embedder: str
    table: RoutingTable
    router: str = ""  # the label of the router the snapshot routes with
    revision: int = 0  # the snapshot's revision when the table was read


_tables: dict[int, Served] = {}  # snapshot id -> its table, as of the revision it records
_tables_lock = threading.Lock()
# (snapshot id, revision) of the active snapshot (key None) and of each snapshot a request named, as last read.
_current: dict[int | None, tuple[float, tuple[int, int]]] = {}


def current_snapshot(snapshot_id: int | None) -> tuple[int, int] | None:
    """Return (id, revision) of the active snapshot, or of the one named; None when there is no such snapshot.

    One indexed query at most every AVENGERS_ROUTING_REFRESH_S (0: on every request). Activating a snapshot,
    or editing its label, bumps revisions, so every process serves the change within that time.
    """
    now = time.monotonic()
    checked = _current.get(snapshot_id)
    if checked is not None and now - checked[0] < settings.ROUTING_REFRESH_S:
        return checked[1]
    rows = RouterSnapshot.objects.filter(is_active=True) if snapshot_id is None else \
        RouterSnapshot.objects.filter(pk=snapshot_id)
    found = next(iter(rows.order_by().values_list("id", "revision")[:1]), None)
    if found is None:
        _current.pop(snapshot_id, None)  # unknown ids are not remembered: a caller could send any number of them
    else:
        _current[snapshot_id] = (now, found)
    return found


def _served(snapshot_id: int | None) -> Served:
    current = current_snapshot(snapshot_id)
    if current is None:
        if snapshot_id is None:
            raise ServingError(503, "no_active_snapshot", "No router snapshot is active. Build one and activate it "
                                                          "(dashboard: Routing, or POST /api/v1/snapshots/{id}/activate).")
        _tables.pop(snapshot_id, None)
        raise ServingError(404, "unknown_snapshot", f"There is no router snapshot {snapshot_id}.")
    snapshot_id, revision = current
    served = _tables.get(snapshot_id)
    # Older than the database says: reload. (A table read after the check may be newer; it stays.)
    if served is None or served.revision < revision:
        with _tables_lock:
            served = _tables.get(snapshot_id)
            if served is None or served.revision < revision:
                served = _load_table(snapshot_id)
                _tables[snapshot_id] = served
                _keep_loaded()
    return served


def _load_table(snapshot_id: int) -> Served:
    snapshot = RouterSnapshot.objects.filter(pk=snapshot_id).first()
    if snapshot is None:
        raise ServingError(404, "unknown_snapshot", f"There is no router snapshot {snapshot_id}.")
    if snapshot.status != RouterSnapshot.Status.DONE:
        raise ServingError(409, "snapshot_not_ready",
                           f"Snapshot v{snapshot.version} is {snapshot.get_status_display()}, not built; it cannot "
                           "route until its build has finished.")
    clusters = list(SnapshotCluster.objects.filter(snapshot=snapshot).order_by("index")
                    .values_list("index", "centroid", "datasets"))
    if not clusters or [c[0] for c in clusters] != list(range(len(clusters))):
        raise ServingError(409, "snapshot_incomplete", f"Snapshot v{snapshot.version} has no complete set of clusters.")
    profiles = list(SnapshotProfile.objects.filter(snapshot=snapshot)
                    .values_list("model__name", "cluster", "n", "mean", "estimate"))
    names = sorted({p[0] for p in profiles})
    column = {name: j for j, name in enumerate(names)}
    k = len(clusters)
    estimates = np.full((k, len(names)), np.nan)
    totals, counts = np.zeros(len(names)), np.zeros(len(names))
    for name, cluster, n, mean, estimate in profiles:
        j = column[name]
        if estimate is not None:
            estimates[cluster, j] = estimate
        if mean is not None and n:
            totals[j] += mean * n
            counts[j] += n
    overall = np.where(counts > 0, totals / np.where(counts > 0, counts, 1), np.nan)
    team = tuple(m for m in snapshot.team if m in column) or tuple(names)
    task_types: list[Counter[str]] = [Counter() for _ in range(k)]
    for cluster, task_type, count in (SnapshotQuery.objects.filter(snapshot=snapshot)
                                      .values_list("cluster", "query__task_type").annotate(n=Count("id"))):
        if task_type:
            task_types[cluster][task_type] += count
    from routing.services import snapshot_router

    router = snapshot_router(snapshot)
    if router is not None and tuple(router.models) != tuple(names):
        raise ServingError(409, "snapshot_incomplete", f"Snapshot v{snapshot.version}'s router and profiles cover "
                                                       "different models.")
    table = RoutingTable(
        centroids=np.asarray([c[1] for c in clusters], dtype=np.float32), router=router,
        models=tuple(names), estimates=estimates, overall=overall if router is None else router.overall, team=team,
        categories=tuple(max(c[2].items(), key=lambda item: (item[1], item[0]))[0] if c[2] else "" for c in clusters),
        task_types=tuple(t.most_common(1)[0][0] if t else "" for t in task_types),
    )
    return Served(snapshot_id, snapshot.version, snapshot.embedder, table,
                  (snapshot.router_chosen or {}).get("label", "cluster"), snapshot.revision)


def forget() -> None:
    """Drop what this process has cached: tables, which snapshots they are, the models (tests use it).

    Nothing else needs it: a snapshot's table is reloaded when its revision changes, the rest is re-read within
    AVENGERS_ROUTING_REFRESH_S.
    """
    global _models_cache
    with _tables_lock:
        _tables.clear()
        _current.clear()
    _models_cache = (0.0, {})


# ------------------------------------------------------------------------------------------- embedding


class _Embedding:
    """One embedder per name for this process, behind a micro-batcher, with an in-memory cache of recent queries.

    Concurrent requests of one process (threaded workers) are embedded together: up to
    AVENGERS_EMBED_MAX_BATCH texts per call for a remote embedder (``openai:...``), where a batch saves round
    trips, and one at a time for the local ONNX models, where padding a batch to its longest text costs more
    CPU than it saves (docs/BENCHMARKS.md); the batcher then only makes the threads take turns.
    """

    def __init__(self, capacity: int = 4096) -> None:
        self._embedders: dict[str, Embedder] = {}
        self._batchers: dict[str, MicroBatcher] = {}
        self._lock = threading.Lock()
        self._recent: OrderedDict[tuple[str, str], np.ndarray] = OrderedDict()
        self._capacity = capacity

    def embedder(self, name: str) -> Embedder:
        embedder = self._embedders.get(name)
        if embedder is None:
            with self._lock:
                embedder = self._embedders.get(name)
                if embedder is None:
                    embedder = get_embedder(name)
                    self._embedders[name] = embedder
                    _keep_loaded()
        return embedder

    def batcher(self, name: str) -> MicroBatcher:
        batcher = self._batchers.get(name)
        if batcher is None:
            embedder = self.embedder(name)  # outside the lock: embedder() takes it too
            with self._lock:
                batcher = self._batchers.get(name)
                if batcher is None:
                    remote = name == "openai" or name.startswith("openai:")
                    batcher = MicroBatcher(lambda texts: embedder.embed(texts),
                                           max_batch=settings.EMBED_MAX_BATCH if remote else 1,
                                           max_wait_ms=settings.EMBED_MAX_WAIT_MS)
                    self._batchers[name] = batcher
        return batcher

    def embed(self, name: str, text: str) -> np.ndarray:
        key = (name, text)
        with self._lock:
            vector = self._recent.get(key)
            if vector is not None:
                self._recent.move_to_end(key)
                return vector
        vector = self.batcher(name).embed_one(text)
        with self._lock:
            self._recent[key] = vector
            while len(self._recent) > self._capacity:
                self._recent.popitem(last=False)
        return vector


_embedding = _Embedding()


def embed_query(embedder: str, text: str) -> np.ndarray:
    try:
        return _embedding.embed(embedder, text)
    except Exception as exc:  # noqa: BLE001 - an embedder that cannot load is the service's problem, said plainly
        _log.exception("embedding with %s failed", embedder)
        raise ServingError(503, "embedding_failed", f"The embedder {embedder!r} failed: {exc}") from None


def warm_up() -> Served:
    """Load the active snapshot's routing table and its embedder into this process (GET /readyz calls it)."""
    served = _served(None)
    embed_query(served.embedder, "warm-up")
    return served


# ------------------------------------------------------------------------------------------- models


_models_cache: tuple[float, dict[str, LanguageModel]] = (0.0, {})


def _models(names: Sequence[str]) -> dict[str, LanguageModel]:
    """Return the named models, read from the database at most every AVENGERS_ROUTING_REFRESH_S seconds."""
    global _models_cache
    checked, cached = _models_cache
    if time.monotonic() - checked >= settings.ROUTING_REFRESH_S or any(n not in cached for n in names):
        cached = {m.name: m for m in LanguageModel.objects.filter(name__in=set(names) | set(cached))}
        _models_cache = (time.monotonic(), cached)
    return cached


_clients: dict[tuple[str, str, int, float], providers.OpenAIChatClient] = {}
_clients_lock = threading.Lock()


def serving_client(model: LanguageModel) -> providers.OpenAIChatClient:
    """Return this process's serving client of the model's endpoint.

    One attempt per call (a failure moves on to the next model instead of backing off), at most
    AVENGERS_ROUTE_MODEL_TIMEOUT_S per model (so that a hung server leaves time for the next), the endpoint's
    ``max_concurrency``, and the circuit breaker of the evaluation client of the same endpoint, so that both
    agree on which servers are down.
    """
    key = (model.base_url.rstrip("/"), model.api_key, model.max_concurrency, settings.ROUTE_MODEL_TIMEOUT_S)
    client = _clients.get(key)
    if client is None:
        with _clients_lock:
            client = _clients.get(key)
            if client is None:
                shared = providers.client_for(base_url=model.base_url, api_key=model.api_key,
                                              max_concurrency=model.max_concurrency,
                                              timeout_s=settings.GENERATION_TIMEOUT_S)
                shared.breaker.reset_after_s = settings.CIRCUIT_RESET_S
                client = providers.OpenAIChatClient(
                    base_url=model.base_url, api_key=model.api_key, max_concurrency=model.max_concurrency,
                    timeout_s=settings.ROUTE_MODEL_TIMEOUT_S, retry=RetryPolicy(max_attempts=1),
                    breaker=shared.breaker)
                _clients[key] = client
    return client


def _availability(models: Mapping[str, LanguageModel]) -> Any:
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


# ------------------------------------------------------------------------------------------- requests


@dataclass
class Request:
    """What a caller asked, validated."""

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

    def validate(self) -> None:
        if not isinstance(self.query, str) or not self.query.strip():
            raise ServingError(400, "invalid", "query: the query is empty.")
        if len(self.query) > settings.MAX_QUERY_CHARS:
            raise ServingError(413, "query_too_long", f"query: {len(self.query)} characters; the most this server "
                                                      f"takes is {settings.MAX_QUERY_CHARS} (AVENGERS_MAX_QUERY_CHARS).")
        if self.strategy not in STRATEGIES:
            raise ServingError(400, "invalid", f"strategy: {self.strategy!r} is not one of {', '.join(STRATEGIES)}.")
        if not 1 <= self.samples <= settings.MAX_SAMPLES:
            raise ServingError(400, "invalid", f"samples: must be between 1 and {settings.MAX_SAMPLES}.")
        if not 0.0 <= self.temperature <= 2.0:
            raise ServingError(400, "invalid", "temperature: must be between 0 and 2.")
        if self.task_type not in (None, "", *TASK_TYPES):
            raise ServingError(400, "invalid", f"task_type: {self.task_type!r} is not one of {', '.join(TASK_TYPES)}.")
        if self.max_tokens is not None and not 1 <= self.max_tokens <= settings.MAX_ANSWER_TOKENS:
            raise ServingError(400, "invalid", f"max_tokens: must be between 1 and {settings.MAX_ANSWER_TOKENS}.")
        if self.timeout_s is not None and not 0 < self.timeout_s <= settings.ROUTE_DEADLINE_S:
            raise ServingError(400, "invalid", f"timeout_s: must be more than 0 and at most {settings.ROUTE_DEADLINE_S:g}.")


def new_request_id() -> str:
    return "dec_" + uuid.uuid4().hex[:24]


@dataclass
class _Trace:
    """The parts of a decision row gathered while serving."""

    request: Request
    request_id: str
    started: float
    served: Served | None = None
    route: Route | None = None
    chosen: str = ""
    timings: dict[str, float] | None = None

    def __post_init__(self) -> None:
        self.timings = {}

    def row(self, *, outcome: Outcome | None = None, status: int = 200, error: str = "",
            task_type: str = "", final_answer: str = "", extra_ms: Mapping[str, float] | None = None) -> RoutingDecision:
        req = self.request
        timings = dict(self.timings or {})
        timings.update(extra_ms or {})
        if outcome is not None:
            timings.setdefault("generate", round(outcome.generate_ms, 3))
            timings.setdefault("vote", round(outcome.vote_ms, 3))
        total = (time.perf_counter() - self.started) * 1000
        timings["total"] = round(total, 3)
        route = self.route
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
            candidates=_candidates_json(route, outcome) if route else [],
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


def _candidates_json(route: Route, outcome: Outcome | None) -> list[dict[str, Any]]:
    skipped = {s.model: s.reason for s in outcome.skipped} if outcome else {}
    failed = {f.model: f.message for f in outcome.failures} if outcome else {}
    rows = []
    for c in route.candidates:
        row: dict[str, Any] = {"model": c.model, "score": c.score, "rank": c.rank, "in_team": c.in_team}
        if c.model in skipped:
            row["skipped"] = skipped[c.model]
        if c.model in failed:
            row["failed"] = failed[c.model]
        rows.append(row)
    return rows


def _begin(request: Request) -> _Trace:
    request.validate()
    trace = _Trace(request=request, request_id=new_request_id(), started=time.perf_counter())
    return trace


def _route(trace: _Trace) -> Route:
    trace.served = _served(trace.request.snapshot_id)
    mark = time.perf_counter()
    vector = embed_query(trace.served.embedder, trace.request.query)
    assert trace.timings is not None
    trace.timings["embed"] = round((time.perf_counter() - mark) * 1000, 3)
    mark = time.perf_counter()
    trace.route = trace.served.table.route(vector, runner_ups=settings.ROUTING_RUNNER_UPS)
    trace.timings["decide"] = round((time.perf_counter() - mark) * 1000, 3)
    return trace.route


def _decision_json(trace: _Trace, outcome: Outcome | None = None, *, task_type: str = "") -> dict[str, Any]:
    assert trace.served is not None and trace.route is not None
    route = trace.route
    return {
        "id": trace.request_id,
        "snapshot": {"id": trace.served.id, "version": trace.served.version, "router": trace.served.router},
        "cluster": route.cluster,
        "similarity": round(route.similarity, 6),
        "category": route.category,
        "task_type": task_type or route.task_type,
        "runner_ups": [{"cluster": c, "similarity": round(s, 6)} for c, s in route.runner_ups],
        "candidates": _candidates_json(route, outcome),
        "chosen": trace.chosen,
        "timings_ms": {k: v for k, v in (trace.timings or {}).items() if k in ("embed", "decide")},
    }


def _fail(trace: _Trace, error: ServingError, outcome: Outcome | None = None) -> ServingError:
    """Log a failed request and return the error to raise."""
    decision_log.submit(trace.row(outcome=outcome, status=error.status, error=error.message))
    return error


def _start(request: Request) -> tuple[_Trace, Route, dict[str, LanguageModel]]:
    """Validate, embed and route (a failure is logged and raised); return the trace, the route, its models."""
    trace = _begin(request)
    try:
        route_ = _route(trace)
    except ServingError as error:
        raise _fail(trace, error) from None
    return trace, route_, _models([c.model for c in route_.candidates])


# ------------------------------------------------------------------------------------------- entry points


def route(request: Request) -> dict[str, Any]:
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
    body = _decision_json(trace, outcome)
    body["timings_ms"]["total"] = round((time.perf_counter() - trace.started) * 1000, 3)
    decision_log.submit(trace.row(outcome=outcome))
    return body


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


def answer(request: Request) -> dict[str, Any]:
    """Route, sample, vote; return the body of POST /api/v1/answer. Raise ServingError (logged) on failure."""
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
    decision_log.submit(trace.row(outcome=outcome, task_type=task_type, final_answer=final))
    timings = dict(trace.timings or {})
    timings.update(generate=round(outcome.generate_ms, 3), vote=round(outcome.vote_ms, 3),
                   total=round((time.perf_counter() - trace.started) * 1000, 3))
    return {
        "id": trace.request_id,
        "answer": final,
        "answer_key": outcome.vote.answer,
        "response": winner.text,
        "model": winner.model,
        "strategy": request.strategy,
        "votes": [{"answer": a, "votes": v} for a, v in outcome.vote.tally],
        "agreement": round(outcome.vote.agreement, 6),
        "samples": [{"model": s.model, "index": s.index, "answer": s.answer, "key": s.key, "text": s.text,
                     "finish_reason": s.finish_reason} for s in outcome.samples],
        "fallback": outcome.fallback,
        "failures": [{"model": f.model, "kind": f.kind, "message": f.message} for f in outcome.failures],
        "usage": {"prompt_tokens": outcome.prompt_tokens, "completion_tokens": outcome.completion_tokens},
        "timings_ms": timings,
        "decision": _decision_json(trace, outcome, task_type=task_type),
    }


@dataclass
class Stream:
    """A started token stream: the decision so far (for headers) and the pieces of text still to come."""

    request_id: str
    model: str
    decision: dict[str, Any]
    fallback: bool
    pieces: Iterator[str]


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
    decision = _decision_json(trace, outcome, task_type=task_type)

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

    return Stream(request_id=trace.request_id, model=model, decision=decision, fallback=outcome.fallback,
                  pieces=pieces())


def snapshot_choices() -> list[dict[str, Any]]:
    """The snapshots a request may name (built ones), newest first, for GET /v1/models."""
    return list(RouterSnapshot.objects.filter(status=RouterSnapshot.Status.DONE)
                .order_by("-version").values("id", "version", "label", "is_active", "created_at"))
