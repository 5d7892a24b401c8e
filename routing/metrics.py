"""Prometheus metrics of the routing service, taken from each request's decision row; /metrics serves them.

Labels stay bounded: the endpoint (route, answer, chat, playground), a model name, a cluster index, a strategy,
an HTTP status, a failure kind. Never the query or anything derived from it.
"""
from __future__ import annotations

import functools
import logging
from typing import Any

from prometheus_client import Counter, Histogram

from routing.models import RoutingDecision

_log = logging.getLogger(__name__)

# The stages a decision row times (RoutingDecision.timings_ms): embed the query, decide (assign its cluster and
# rank the candidates), generate (the models' samples), vote, first_byte (a stream's first token), total.
STAGES = ("embed", "decide", "generate", "vote", "first_byte", "total")
ROUTE_STAGES = ("embed", "decide", "total")  # POST /api/v1/route generates nothing (its row says 0 ms)
# From the sub-millisecond routing decision to a minute of generation.
STAGE_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
                 float("inf"))

STAGE_SECONDS = Histogram(
    "avengers_routing_stage_seconds", "Time a routed request spent in each stage, by endpoint and stage.",
    ["endpoint", "stage"], buckets=STAGE_BUCKETS)
REQUESTS = Counter("avengers_routing_requests", "Routed requests by endpoint and HTTP status.", ["endpoint", "status"])
DECISIONS = Counter(
    "avengers_routing_decisions", "Routing decisions by endpoint, chosen model (none: no model could answer), "
                                  "cluster and strategy.",
    ["endpoint", "model", "cluster", "strategy"])
FALLBACKS = Counter(
    "avengers_routing_fallbacks", "Requests answered by a lower-ranked model because a better one failed, by the "
                                  "reason (a failure kind, or circuit_open).",
    ["endpoint", "reason"])


@functools.lru_cache(maxsize=4096)
def _child(metric: Any, *labels: str) -> Any:
    # labels() validates and locks on every call; a request counts a handful of series, so remember them.
    return metric.labels(*labels)


def observe_decision(row: RoutingDecision) -> None:
    """Count one routed request from its decision row; never raises."""
    try:
        endpoint = str(row.endpoint)
        _child(REQUESTS, endpoint, str(row.status_code)).inc()
        for stage in STAGES if endpoint != RoutingDecision.Endpoint.ROUTE else ROUTE_STAGES:
            ms = (row.timings_ms or {}).get(stage)
            if isinstance(ms, (int, float)):
                _child(STAGE_SECONDS, endpoint, stage).observe(ms / 1000)
        if row.cluster is not None:
            _child(DECISIONS, endpoint, row.chosen_model or "none", str(row.cluster), row.strategy or "none").inc()
        if row.fallback:
            for reason in _fallback_reasons(row):
                _child(FALLBACKS, endpoint, reason).inc()
    except Exception:  # noqa: BLE001 - metrics must never fail a request
        _log.exception("could not count decision %s", getattr(row, "request_id", "?"))


def _fallback_reasons(row: RoutingDecision) -> set[str]:
    reasons = {str(f.get("kind") or "unknown") for f in row.failures or [] if isinstance(f, dict)}
    if any(str(c.get("skipped", "")).startswith("circuit open") for c in row.candidates or [] if isinstance(c, dict)):
        reasons.add("circuit_open")
    return reasons or {"unknown"}
