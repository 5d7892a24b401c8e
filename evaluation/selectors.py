"""Read-only queries for datasets, imports and models."""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Any

from django.db.models import Avg, Count, Q, QuerySet

from evaluation.models import Dataset, DatasetImport, LanguageModel, ModelResponse, Query


def dataset_list() -> QuerySet[Dataset]:
    return Dataset.objects.annotate(
        n_queries=Count("queries"),
        n_train=Count("queries", filter=Q(queries__split="train")),
        n_test=Count("queries", filter=Q(queries__split="test")),
    ).order_by("name")


def dataset_get(pk: int) -> Dataset | None:
    return dataset_list().filter(pk=pk).first()


@dataclass(frozen=True)
class ModelScore:
    model_id: int
    model_name: str
    split: str
    n: int
    mean_score: float | None


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
