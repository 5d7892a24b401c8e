"""One batch's samples: plan its requests, call the server, grade the answers, and write the rows."""
from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

from django.conf import settings
from django.db import connection
from django.utils import timezone

from evaluation import metrics
from evaluation.core import grading
from evaluation.core.generation import ChatRequest, Completion, GenerationError, LLMClient
from evaluation.core.prompts import cache_key, params_key, render, resolve_template
from evaluation.models import EvaluationBatch, EvaluationRun, EvaluationRunModel, GenerationCache, ModelResponse, Query

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class _Job:
    query: Query
    prompt: str
    params_key: str
    sample_indexes: tuple[int, ...]
    request: ChatRequest
    cache_key: str | None  # set when the request is seeded and the run may use the cache


@dataclass(frozen=True)
class _Outcome:
    job: _Job
    completion: Completion | None
    error: GenerationError | None
    grades: tuple[grading.Grade | grading.GradingUnavailable | None, ...]


def _grade(query: Query, text: str) -> grading.Grade | grading.GradingUnavailable | None:
    """Grade one answer against the query's gold; None when there is nothing to grade against."""
    if not query.gold:
        return None
    task_type = query.task_type or "exact"
    try:
        # The grader's registration says which of the query's metadata, text and settings it takes.
        options = grading.grader_options(task_type, metadata=query.metadata or {}, query_text=query.text,
                                         setting=partial(getattr, settings))
        return grading.grade(task_type, text, query.gold, **options)
    except grading.GradingUnavailable as exc:
        return exc  # recorded as the sample's error, so that a resume grades it once the machine can
    except Exception as exc:
        # Graders do not raise on any text; a raise is our bug, and it must not cost the sample its answer.
        logger.exception("grading query %s failed", query.pk)
        return grading.Grade(correct=False, score=0.0, extracted=None, reason=f"grader error: {exc}")


def _call(client: LLMClient, job: _Job) -> _Outcome:
    try:
        completion = client.complete(job.request)
    except GenerationError as exc:
        return _Outcome(job, None, exc, ())
    # Grading runs here, in the pool's thread, so that slow graders (code in the sandbox) overlap with generation.
    grades = tuple(_grade(job.query, choice.text) for choice in completion.choices)
    return _Outcome(job, completion, None, grades)


def _plan_jobs(batch: EvaluationBatch, run: EvaluationRun, run_model: EvaluationRunModel) -> list[_Job]:
    queries = list(Query.objects.filter(id__in=batch.query_ids).order_by("id"))
    keys = run_model.params_keys
    finished = set(
        ModelResponse.objects.filter(model_id=run_model.model_id, query_id__in=batch.query_ids,
                                     params_key__in=list(keys.values()), sample_index__lt=run.samples, error="")
        .values_list("query_id", "sample_index")
    )
    params = dict(run_model.params)
    seed = params.pop("seed", None)
    stop = tuple(params.pop("stop", ()) or ())
    model = run_model.model
    jobs = []
    for query in queries:
        template = run_model.templates.get(query.task_type) or resolve_template(query.task_type)
        prompt = render(template, query.text, choices=(query.metadata or {}).get("choices"))
        messages = ({"role": "user", "content": prompt},)
        missing = tuple(i for i in range(run.samples) if (query.pk, i) not in finished)
        if not missing:
            continue
        key = keys.get(query.task_type) or params_key(run_model.params, template)
        if seed is None:
            # Unseeded samples are interchangeable: ask for all of them in one request (vLLM's n).
            request = ChatRequest(model=model.model_id, messages=messages, n=len(missing), stop=stop, **params)
            jobs.append(_Job(query, prompt, key, missing, request, None))
            continue
        for index in missing:
            # Seed + sample index: samples differ from each other but each one is reproducible, hence cacheable.
            request = ChatRequest(model=model.model_id, messages=messages, n=1, seed=int(seed) + index, stop=stop, **params)
            ckey = cache_key(base_url=model.base_url, model=model.model_id, messages=messages,
                             params=request.params()) if run.use_cache else None
            jobs.append(_Job(query, prompt, key, (index,), request, ckey))
    return jobs


_UPSERT_COLUMNS = (
    "model_id", "query_id", "sample_index", "params_key", "source", "run_id", "prompt", "text", "params",
    "finish_reason", "prompt_tokens", "completion_tokens", "latency_ms", "error", "error_kind", "extracted", "score",
    "correct", "grade_reason", "cached", "attempts", "created_at", "updated_at",
)
_UNIQUE_COLUMNS = ("model_id", "query_id", "sample_index", "params_key")


def _rows(run: EvaluationRun, run_model: EvaluationRunModel, outcome: _Outcome,
          cached_row: GenerationCache | None) -> list[dict[str, Any]]:
    """Return the response rows of one request: one per sample it answered (or failed)."""
    job = outcome.job
    now = timezone.now()
    rows = []
    completion = outcome.completion
    n = len(job.sample_indexes)
    for position, index in enumerate(job.sample_indexes):
        row: dict[str, Any] = {
            "model_id": run_model.model_id, "query_id": job.query.pk, "sample_index": index,
            "params_key": job.params_key, "source": ModelResponse.Source.GENERATED, "run_id": run.pk,
            "prompt": job.prompt, "params": json.dumps(job.request.params()), "cached": cached_row is not None,
            "created_at": now, "updated_at": now, "text": "", "finish_reason": "", "prompt_tokens": None,
            "completion_tokens": None, "latency_ms": None, "error": "", "error_kind": "", "extracted": None,
            "score": None, "correct": None, "grade_reason": "", "attempts": None,
        }
        if cached_row is not None:
            row.update(text=cached_row.text, finish_reason=cached_row.finish_reason,
                       prompt_tokens=cached_row.prompt_tokens, completion_tokens=cached_row.completion_tokens,
                       latency_ms=0.0, attempts=0)
        elif completion is not None:
            choice = completion.choices[position]
            # Servers report usage per request; n samples share it evenly.
            row.update(text=choice.text, finish_reason=choice.finish_reason, prompt_tokens=completion.prompt_tokens,
                       completion_tokens=None if completion.completion_tokens is None
                       else round(completion.completion_tokens / n),
                       latency_ms=completion.latency_ms, attempts=completion.attempts)
        else:
            error = outcome.error
            row.update(error=(error.message if error else "") or "no answer",
                       error_kind=error.kind if error else "", attempts=error.attempts if error else None)
        grade = outcome.grades[position] if position < len(outcome.grades) else None
        if isinstance(grade, grading.GradingUnavailable):
            row.update(error=f"not graded: {grade}", error_kind="grading")
        elif grade is not None:
            row.update(extracted=grade.extracted, score=grade.score, correct=grade.correct, grade_reason=grade.reason)
        rows.append(row)
    return rows


def _write(run: EvaluationRun, run_model: EvaluationRunModel,
           outcomes: Sequence[tuple[_Outcome, GenerationCache | None]]) -> int:
    """Store the samples of these requests in one statement; replace only failed rows, never finished ones."""
    rows = [row for outcome, hit in outcomes for row in _rows(run, run_model, outcome, hit)]
    if not rows:
        return 0
    table = ModelResponse._meta.db_table
    placeholders = ", ".join(["(" + ", ".join(["%s"] * len(_UPSERT_COLUMNS)) + ")"] * len(rows))
    updates = ", ".join(f"{c} = EXCLUDED.{c}" for c in _UPSERT_COLUMNS if c not in _UNIQUE_COLUMNS + ("created_at",))
    sql = (f"INSERT INTO {table} ({', '.join(_UPSERT_COLUMNS)}) VALUES {placeholders} "
           f"ON CONFLICT ({', '.join(_UNIQUE_COLUMNS)}) DO UPDATE SET {updates} WHERE {table}.error <> ''")
    with connection.cursor() as cursor:
        cursor.execute(sql, [row[c] for row in rows for c in _UPSERT_COLUMNS])
        written = cursor.rowcount
    model = run_model.model
    metrics.samples_stored(model.name, rows)
    fresh = [
        GenerationCache(key=o.job.cache_key, base_url=model.base_url, served_model=model.model_id,
                        params=o.job.request.params(), text=o.completion.choices[0].text,
                        finish_reason=o.completion.choices[0].finish_reason, prompt_tokens=o.completion.prompt_tokens,
                        completion_tokens=o.completion.completion_tokens)
        for o, hit in outcomes if hit is None and o.completion is not None and o.job.cache_key
    ]
    GenerationCache.objects.bulk_create(fresh, ignore_conflicts=True)
    return written

