"""Prometheus metrics of model calls, circuit breakers and evaluation work; /metrics (config.metrics) serves them.

Labels stay bounded: a model is the id sent to its server, an endpoint its base URL without credentials or query,
an error its kind (evaluation.core.generation.KINDS). With PROMETHEUS_MULTIPROC_DIR set, every process (gunicorn
workers, Celery workers) writes its values there and /metrics adds them up.
"""
from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any
from urllib.parse import urlsplit

from prometheus_client import Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from evaluation.core.generation import Completion

_log = logging.getLogger(__name__)

# From a short answer of a local model to a long one of a slow server.
GENERATION_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, float("inf"))
CIRCUIT_STATES = {"closed": 0, "half_open": 1, "open": 2}

GENERATION_SECONDS = Histogram(
    "avengers_generation_seconds", "Wall time of a chat completion that succeeded, retries included, by model.",
    ["model"], buckets=GENERATION_BUCKETS)
GENERATION_TOKENS = Counter(
    "avengers_generation_tokens", "Tokens as the model servers counted them, by model and kind (prompt, completion).",
    ["model", "kind"])
GENERATION_ERRORS = Counter(
    "avengers_generation_errors", "Chat completions that failed after their retries, by model and error kind.",
    ["model", "kind"])
CIRCUIT_STATE = Gauge(
    "avengers_circuit_state", "Circuit breaker of a model endpoint: 0 closed, 1 half-open, 2 open "
                              "(the worst state any live process holds).",
    ["endpoint"], multiprocess_mode="livemax")
CIRCUIT_OPENED = Counter("avengers_circuit_opened", "Times a model endpoint's circuit breaker opened.", ["endpoint"])
EVALUATION_SAMPLES = Counter(
    "avengers_evaluation_samples", "Samples the evaluation workers stored, by model and result "
                                   "(graded, ungraded: no gold answer, failed: no answer).",
    ["model", "result"])


def endpoint_label(base_url: str) -> str:
    """Return the base URL as a label: scheme, host, port and path, never a user, password or query."""
    try:
        parts = urlsplit(base_url)
        host = parts.hostname or ""
        if ":" in host:
            host = f"[{host}]"
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        return "invalid"
    return f"{parts.scheme}://{host}{port}{parts.path.rstrip('/')}"


def generation_done(model: str, completion: Completion) -> None:
    GENERATION_SECONDS.labels(model).observe(completion.latency_ms / 1000)
    if completion.prompt_tokens:
        GENERATION_TOKENS.labels(model, "prompt").inc(completion.prompt_tokens)
    if completion.completion_tokens:
        GENERATION_TOKENS.labels(model, "completion").inc(completion.completion_tokens)


def generation_failed(model: str, kind: str) -> None:
    GENERATION_ERRORS.labels(model, kind).inc()


def circuit_watcher(base_url: str) -> Callable[[str], None]:
    """Return a CircuitBreaker ``on_change`` that keeps the endpoint's gauge; the gauge starts at closed."""
    label = endpoint_label(base_url)
    CIRCUIT_STATE.labels(label).set(CIRCUIT_STATES["closed"])

    def changed(state: str) -> None:
        CIRCUIT_STATE.labels(label).set(CIRCUIT_STATES.get(state, 2))
        if state == "open":
            CIRCUIT_OPENED.labels(label).inc()

    return changed


def samples_stored(model: str, rows: Iterable[Mapping[str, Any]]) -> None:
    """Count the response rows a worker stored: graded, ungraded or failed."""
    counts = {"graded": 0, "ungraded": 0, "failed": 0}
    for row in rows:
        counts["failed" if row["error"] else "graded" if row["score"] is not None else "ungraded"] += 1
    for result, count in counts.items():
        if count:
            EVALUATION_SAMPLES.labels(model, result).inc(count)


class QueueDepthCollector(Collector):
    """Evaluation batches waiting for or held by a worker, read from the database at each scrape."""

    def collect(self) -> Iterator[GaugeMetricFamily]:
        from django.db import DatabaseError
        from django.db.models import Count

        from evaluation.models import EvaluationBatch

        family = GaugeMetricFamily("avengers_evaluation_batches", "Evaluation batches pending (queued or waiting "
                                                                  "for an open circuit) or running.", labels=["status"])
        wanted = (EvaluationBatch.Status.PENDING, EvaluationBatch.Status.RUNNING)
        try:
            counts = dict(EvaluationBatch.objects.filter(status__in=wanted).order_by().values_list("status")
                          .annotate(n=Count("id")))
        except DatabaseError:
            _log.warning("metrics: could not count evaluation batches", exc_info=True)
            return
        for status in wanted:
            family.add_metric([str(status)], counts.get(status, 0))
        yield family
