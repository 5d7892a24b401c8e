"""Read-only queries for datasets, imports and models."""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Any

from django.db.models import Avg, Count, Q, QuerySet, Sum
from django.utils import timezone

from avengers_web.parsing import parse_id
from evaluation.models import (
    Dataset,
    DatasetImport,
    EvaluationRun,
    EvaluationRunModel,
    LanguageModel,
    ModelResponse,
    Query,
)


def dataset_list() -> QuerySet[Dataset]:
    return Dataset.objects.annotate(
        n_queries=Count("queries"),
        n_train=Count("queries", filter=Q(queries__split="train")),
        n_test=Count("queries", filter=Q(queries__split="test")),
    ).order_by("name")


def dataset_get(pk: int) -> Dataset | None:
    return dataset_list().filter(pk=pk).first()


def dataset_stats(dataset: Dataset) -> dict[str, Any]:
    """Counts by split, task type and category, and each model's mean score per split."""
    queries = Query.objects.filter(dataset=dataset)
    by_split = dict(queries.values_list("split").annotate(n=Count("id")).order_by())
    by_task = dict(queries.values_list("task_type").annotate(n=Count("id")).order_by("task_type"))
    by_category = dict(queries.values_list("category").annotate(n=Count("id")).order_by("category"))
    rows = (
        ModelResponse.objects.filter(query__dataset=dataset, score__isnull=False)
        .values("model_id", "model__name", "query__split")
        .annotate(n=Count("id"), mean=Avg("score"))
        .order_by("model__name", "query__split")
    )
    models: dict[str, dict[str, Any]] = defaultdict(dict)
    for row in rows:
        entry = models[row["model__name"]]
        entry["id"] = row["model_id"]
        entry[row["query__split"]] = {"n": row["n"], "mean": row["mean"]}
    return {
        "queries": sum(by_split.values()),
        "train": by_split.get("train", 0),
        "test": by_split.get("test", 0),
        "task_types": {k or "unspecified": v for k, v in by_task.items()},
        "categories": {k or "unspecified": v for k, v in by_category.items()},
        "models": [{"name": name, **values} for name, values in sorted(models.items())],
    }


def dataset_queries(
    dataset: Dataset, *, split: str = "", task_type: str = "", search: str = ""
) -> QuerySet[Query]:
    queries = Query.objects.filter(dataset=dataset).order_by("id")
    if split:
        queries = queries.filter(split=split)
    if task_type:
        queries = queries.filter(task_type=task_type)
    if search:
        queries = queries.filter(Q(text__icontains=search) | Q(external_id__icontains=search) | Q(gold__icontains=search))
    return queries


def query_scores(query_ids: list[int]) -> dict[int, dict[str, float]]:
    """Return {query id: {model name: mean score over samples}} for a page of queries."""
    rows = (
        ModelResponse.objects.filter(query_id__in=query_ids, score__isnull=False)
        .values("query_id", "model__name")
        .annotate(mean=Avg("score"))
        .order_by()
    )
    scores: dict[int, dict[str, float]] = defaultdict(dict)
    for row in rows:
        scores[row["query_id"]][row["model__name"]] = row["mean"]
    return scores


def model_list(*, active: bool | None = None) -> QuerySet[LanguageModel]:
    models = LanguageModel.objects.annotate(
        n_responses=Count("responses"), n_datasets=Count("responses__query__dataset", distinct=True)
    ).order_by("name")
    if active is not None:
        models = models.filter(is_active=active)
    return models


def model_get(pk: int) -> LanguageModel | None:
    return model_list().filter(pk=pk).first()


def model_dataset_scores(model: LanguageModel) -> list[dict[str, Any]]:
    """Return the model's scored count and mean score per dataset and split."""
    rows = (
        ModelResponse.objects.filter(model=model, score__isnull=False)
        .values("query__dataset_id", "query__dataset__name", "query__split")
        .annotate(n=Count("id"), mean=Avg("score"))
        .order_by("query__dataset__name", "query__split")
    )
    table: dict[str, dict[str, Any]] = {}
    for row in rows:
        entry = table.setdefault(row["query__dataset__name"], {"dataset": row["query__dataset__name"],
                                                               "dataset_id": row["query__dataset_id"]})
        entry[row["query__split"]] = {"n": row["n"], "mean": row["mean"]}
    return list(table.values())


def overview_counts() -> dict[str, int]:
    return {
        "datasets": Dataset.objects.count(),
        "queries": Query.objects.count(),
        "train": Query.objects.filter(split="train").count(),
        "test": Query.objects.filter(split="test").count(),
        "models": LanguageModel.objects.count(),
        "active_models": LanguageModel.objects.filter(is_active=True).exclude(base_url="").count(),
        "offline_models": LanguageModel.objects.filter(base_url="").count(),
        "responses": ModelResponse.objects.count(),
    }


def import_recent(limit: int = 10) -> QuerySet[DatasetImport]:
    return DatasetImport.objects.defer("payload").select_related("created_by").order_by("-created_at")[:limit]


def import_get(pk: int) -> DatasetImport | None:
    return DatasetImport.objects.defer("payload").filter(pk=pk).first()


# ---------------------------------------------------------------------------------------------- evaluation runs


def run_queries(dataset: Dataset, split: str) -> QuerySet[Query]:
    queries = Query.objects.filter(dataset=dataset)
    return queries if split == EvaluationRun.Split.ALL else queries.filter(split=split)


def run_model_responses(run: EvaluationRun, run_model: EvaluationRunModel) -> QuerySet[ModelResponse]:
    responses = ModelResponse.objects.filter(
        model_id=run_model.model_id, params_key__in=list(run_model.params_keys.values()),
        query__dataset_id=run.dataset_id, query_id__lte=run.max_query_id, sample_index__lt=run.samples,
    )
    if run.split != EvaluationRun.Split.ALL:
        responses = responses.filter(query__split=run.split)
    return responses


def run_query_ids(run: EvaluationRun) -> list[int]:
    ids = run_queries(run.dataset, run.split).filter(id__lte=run.max_query_id).order_by("id").values_list("id", flat=True)
    return list(ids[: run.limit])


@dataclass(frozen=True)
class ModelProgress:
    model_id: int
    model_name: str
    done: int
    failed: int
    cached: int
    graded: int
    correct: int
    mean_score: float | None
    prompt_tokens: int
    completion_tokens: int


@dataclass(frozen=True)
class RunProgress:
    total: int
    done: int
    failed: int
    cached: int
    remaining: int
    rate_per_s: float | None
    eta_s: float | None
    models: list[ModelProgress]
    batches: dict[str, int]

    @property
    def fraction(self) -> float:
        return (self.done + self.failed) / self.total if self.total else 1.0


def run_progress(run: EvaluationRun) -> RunProgress:
    """Count done, failed and cached samples per model from the stored responses (the single source of truth)."""
    models = []
    for run_model in run.run_models.select_related("model"):
        row = run_model_responses(run, run_model).aggregate(
            done=Count("id", filter=Q(error="")), failed=Count("id", filter=~Q(error="")),
            cached=Count("id", filter=Q(cached=True, error="")), graded=Count("id", filter=Q(score__isnull=False)),
            correct=Count("id", filter=Q(correct=True)), mean=Avg("score"),
            prompt_tokens=Sum("prompt_tokens"), completion_tokens=Sum("completion_tokens"),
        )
        models.append(ModelProgress(
            model_id=run_model.model_id, model_name=run_model.model.name, done=row["done"], failed=row["failed"],
            cached=row["cached"], graded=row["graded"], correct=row["correct"], mean_score=row["mean"],
            prompt_tokens=row["prompt_tokens"] or 0, completion_tokens=row["completion_tokens"] or 0,
        ))
    total = run.n_queries * run.samples * len(models)
    done = sum(m.done for m in models)
    failed = sum(m.failed for m in models)
    remaining = max(total - done - failed, 0)
    rate = eta = None
    if run.started_at is not None:
        end = run.finished_at if run.finished_at and not run.is_active else timezone.now()
        elapsed = (end - run.started_at).total_seconds()
        progressed = done + failed - run.completed_at_start
        if elapsed > 0 and progressed > 0:
            rate = progressed / elapsed
            eta = remaining / rate if run.is_active else None
    batches = dict(run.batches.values_list("status").annotate(n=Count("id")).order_by())
    return RunProgress(total=total, done=done, failed=failed, cached=sum(m.cached for m in models),
                       remaining=remaining, rate_per_s=rate, eta_s=eta, models=models, batches=batches)


def run_list(*, status: str = "") -> QuerySet[EvaluationRun]:
    runs = EvaluationRun.objects.select_related("dataset", "created_by").prefetch_related("run_models__model")
    return runs.filter(status=status) if status else runs


def runs_in_progress(limit: int = 20) -> list[tuple[EvaluationRun, RunProgress]]:
    """Return the pending and running evaluations with their progress, oldest first (the overview shows them)."""
    active = [EvaluationRun.Status.PENDING, EvaluationRun.Status.RUNNING]
    return [(run, run_progress(run)) for run in run_list().filter(status__in=active).order_by("id")[:limit]]


def run_get(pk: int) -> EvaluationRun | None:
    return run_list().filter(pk=pk).first()


def _by_name_or_id(objects: QuerySet[Any], values: list[str]) -> tuple[list[Any], list[str]]:
    """Return the rows named (or numbered) in ``values``, in that order without repeats, and the values that match
    none."""
    found: list[Any] = []
    unknown: list[str] = []
    for value in values:
        text = str(value).strip()
        row = objects.filter(name=text).first()
        pk = parse_id(text)
        if row is None and pk is not None:
            row = objects.filter(pk=pk).first()
        if row is None:
            unknown.append(text)
        elif row not in found:
            found.append(row)
    return found, unknown


def datasets_by_name_or_id(values: list[str]) -> tuple[list[Dataset], list[str]]:
    return _by_name_or_id(Dataset.objects.all(), values)


def models_by_name_or_id(values: list[str]) -> tuple[list[LanguageModel], list[str]]:
    return _by_name_or_id(LanguageModel.objects.all(), values)


def run_samples(run: EvaluationRun, *, model: str = "", verdict: str = "", search: str = "") -> QuerySet[ModelResponse]:
    """Return the run's stored samples (shared with earlier runs of the same settings), filtered."""
    selected = Q()
    for run_model in run.run_models.all():
        if not model or run_model.model.name == model:
            selected |= Q(pk__in=run_model_responses(run, run_model).values("pk"))
    if selected == Q():
        return ModelResponse.objects.none()
    samples = ModelResponse.objects.filter(selected).select_related("model", "query")
    if verdict == "correct":
        samples = samples.filter(correct=True)
    elif verdict == "wrong":
        samples = samples.filter(correct=False)
    elif verdict == "ungraded":
        samples = samples.filter(correct__isnull=True, error="")
    elif verdict == "failed":
        samples = samples.exclude(error="")
    if search:
        samples = samples.filter(Q(query__external_id__icontains=search) | Q(query__text__icontains=search)
                                 | Q(text__icontains=search) | Q(extracted__icontains=search))
    return samples.order_by("query_id", "model__name", "sample_index")


# ---------------------------------------------------------------------------------------------- dashboard (runs/views.py)


def run_model_choices() -> QuerySet[LanguageModel]:
    """Return the models a new run can use: active ones that have an endpoint URL."""
    return LanguageModel.objects.filter(is_active=True).exclude(base_url="").order_by("name")
