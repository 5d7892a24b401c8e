"""Write operations for datasets, imports and model endpoints."""
from __future__ import annotations

import hashlib
from collections import defaultdict
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from datetime import timedelta
from decimal import Decimal
from functools import partial
from typing import Any

from django.conf import settings
from django.db import transaction
from django.db.models import Q
from django.urls import reverse
from django.utils import timezone

from avengers_web.service_errors import ServiceError
from avengers_web.services import User, activity_record, owner_of
from evaluation import providers
from evaluation.core.datasets import (
    DatasetFileError,
    ParsedFile,
    Problem,
    Record,
    is_valid_name,
    parse_dataset_file,
    seeded_split,
    text_hash,
)
from evaluation.core.endpoints import normalise_base_url
from evaluation.core.prompts import validate_templates
from evaluation.core.secrets import scrub
from evaluation.core.sampling import validate_sampling_params
from evaluation.models import Dataset, DatasetImport, LanguageModel, ModelResponse, Query
from evaluation.tasks import dataset_import_run as dataset_import_run_task

# An import that has been running this long without finishing is taken to be dead and may be claimed again.
STALE_IMPORT_AFTER = timedelta(minutes=15)


@dataclass
class DatasetSummary:
    name: str
    id: int
    created: bool
    queries_added: int = 0
    queries_existing: int = 0
    train_added: int = 0
    test_added: int = 0


@dataclass
class ImportSummary:
    format: str
    datasets: list[DatasetSummary] = field(default_factory=list)
    queries_added: int = 0
    queries_existing: int = 0
    models_created: list[str] = field(default_factory=list)
    responses_added: int = 0
    responses_existing: int = 0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def dataset_import_file(
    *,
    data: bytes,
    filename: str,
    default_name: str = "",
    split_seed: int | None = None,
    user: User = None,
    dataset_import: DatasetImport | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> ImportSummary:
    """Validate a whole file, then write it in one transaction; raise DatasetFileError and write nothing on a problem."""
    if default_name and not is_valid_name(default_name):
        raise DatasetFileError([Problem(0, "name", f"{default_name!r} is not a valid dataset name (letters, digits, "
                                                   "'.', '_', '-', ':', '/')")])
    parsed = parse_dataset_file(data, filename=filename, max_bytes=settings.MAX_UPLOAD_BYTES, progress=progress)
    by_dataset: dict[str, list[Record]] = defaultdict(list)
    for record in parsed.records:
        name = record.dataset or default_name
        if not name:
            raise DatasetFileError([Problem(record.line, "dataset", "the file has no dataset column here; give a "
                                                                   "dataset name for it (--name, or the name field)")])
        by_dataset[name].append(record)
    with transaction.atomic():
        summary = _write_import(parsed, by_dataset, split_seed, user, dataset_import, filename)
    names = ", ".join(d.name for d in summary.datasets)
    activity_record(actor=user, verb="imported", target=f"{filename}: {summary.queries_added} new queries into {names}",
                    url=reverse("dataset-list"))
    return summary


def _write_import(
    parsed: ParsedFile,
    by_dataset: dict[str, list[Record]],
    split_seed: int | None,
    user: User,
    dataset_import: DatasetImport | None,
    filename: str,
) -> ImportSummary:
    summary = ImportSummary(format=parsed.format)
    owner = owner_of(user)
    problems: list[Problem] = []
    query_ids: dict[tuple[str, str], int] = {}
    new_rows: list[tuple[int, str, Query]] = []  # (line, dataset name, row)
    for name in sorted(by_dataset):
        records = by_dataset[name]
        dataset, created = Dataset.objects.get_or_create(
            name=name,
            defaults={"split_seed": settings.DEFAULT_SPLIT_SEED if split_seed is None else split_seed,
                      "created_by": owner, "source": f"imported from {filename}"},
        )
        # Serialise concurrent imports into the same dataset.
        Dataset.objects.select_for_update().filter(pk=dataset.pk).first()
        ds_summary = DatasetSummary(name=name, id=dataset.pk, created=created)
        summary.datasets.append(ds_summary)
        existing = {
            row[0]: row[1:]
            for row in Query.objects.filter(dataset=dataset, external_id__in=[r.id for r in records])
            .values_list("external_id", "id", "text_hash", "split")
        }
        new_records: list[Record] = []
        for record in records:
            if record.id in existing:
                pk, stored_hash, stored_split = existing[record.id]
                if stored_hash != text_hash(record.query):
                    problems.append(Problem(record.line, "query", f"id {record.id!r} is already in dataset {name!r} "
                                                                  "with a different query text; give it a new id"))
                elif record.split is not None and record.split != stored_split:
                    problems.append(Problem(record.line, "split", f"query {record.id!r} is already in the "
                                                                  f"{stored_split} split of {name!r}; splits never change"))
                query_ids[(name, record.id)] = pk
                ds_summary.queries_existing += 1
            else:
                new_records.append(record)
        seeded = seeded_split([r.id for r in new_records if r.split is None], seed=dataset.split_seed,
                              test_fraction=dataset.test_fraction)
        rows = []
        for record in new_records:
            split = record.split or seeded[record.id]
            rows.append((record.line, name, Query(
                dataset=dataset, external_id=record.id, text=record.query, text_hash=text_hash(record.query),
                gold=record.gold, task_type=record.task_type, category=record.category, split=split,
                split_source=Query.SplitSource.FILE if record.split else Query.SplitSource.SEEDED,
                metadata=dict(record.metadata), dataset_import=dataset_import,
            )))
            if split == "train":
                ds_summary.train_added += 1
            else:
                ds_summary.test_added += 1
        new_rows.extend(rows)
        ds_summary.queries_added = len(rows)
        summary.queries_added += len(rows)
        summary.queries_existing += ds_summary.queries_existing
        if rows and not created:
            Dataset.objects.filter(pk=dataset.pk).update(updated_at=timezone.now())
    if problems:
        raise DatasetFileError(problems)
    # Rows get their ids in the file's order, so that anything that reads queries by id (clustering among
    # them, whose k-means++ start depends on row order) sees them as the offline tools read the file.
    new_rows.sort(key=lambda row: row[0])
    stored = Query.objects.bulk_create([row for _, _, row in new_rows], batch_size=1000)
    for (_, name, _), query in zip(new_rows, stored):
        query_ids[(name, query.external_id)] = query.pk
    summary.responses_added, summary.responses_existing, summary.models_created = _write_responses(
        by_dataset, query_ids, owner, filename
    )
    return summary


def _write_responses(
    by_dataset: dict[str, list[Record]], query_ids: dict[tuple[str, str], int], owner: Any, filename: str
) -> tuple[int, int, list[str]]:
    names = sorted({m for records in by_dataset.values() for r in records for m in (*r.scores, *r.responses, *r.costs)})
    if not names:
        return 0, 0, []
    models = {m.name: m for m in LanguageModel.objects.filter(name__in=names)}
    created = [n for n in names if n not in models]
    for model in LanguageModel.objects.bulk_create(
        LanguageModel(name=n, created_by=owner, description=f"Offline model, created by the import of {filename}.")
        for n in created
    ):
        models[model.name] = model
    existing = set(
        ModelResponse.objects.filter(query_id__in=list(query_ids.values()), sample_index=0, params_key="")
        .values_list("model_id", "query_id")
    )
    rows = []
    seen = 0
    for name, records in by_dataset.items():
        for record in records:
            query_id = query_ids[(name, record.id)]
            for model_name in sorted({*record.scores, *record.responses, *record.costs}):
                model = models[model_name]
                if (model.pk, query_id) in existing:
                    seen += 1
                    continue
                score = record.scores.get(model_name)
                cost = record.costs.get(model_name)
                rows.append(ModelResponse(
                    model=model, query_id=query_id, sample_index=0, source=ModelResponse.Source.IMPORTED,
                    text=record.responses.get(model_name, ""), score=score,
                    correct=None if score is None or 0 < score < 1 else score == 1,
                    cost_usd=None if cost is None else Decimal(str(cost)),
                    grade_reason="imported score" if score is not None else "",
                ))
    # ignore_conflicts: a concurrent import of the same results must not fail the whole file.
    ModelResponse.objects.bulk_create(rows, batch_size=2000, ignore_conflicts=True)
    return len(rows), seen, created


def dataset_import_create(*, data: bytes, filename: str, default_name: str = "", user: User = None) -> DatasetImport:
    """Store an upload and queue it for a worker; refuse at once what is too big or empty."""
    if len(data) > settings.MAX_UPLOAD_BYTES:
        raise DatasetFileError([Problem(0, "", f"the file is {len(data) / 1024 / 1024:.1f} MB, above the limit of "
                                               f"{settings.MAX_UPLOAD_BYTES / 1024 / 1024:.0f} MB; split it")])
    if not data.strip():
        raise DatasetFileError([Problem(0, "", "the file is empty")])
    owner = owner_of(user)
    job = DatasetImport.objects.create(
        filename=filename[:255], size_bytes=len(data), sha256=hashlib.sha256(data).hexdigest(), payload=data,
        default_name=default_name, created_by=owner,
    )
    transaction.on_commit(partial(dataset_import_run_task.delay, job.pk))
    return job


def dataset_import_run(*, import_id: int) -> None:
    """Claim a queued import, validate with progress, write it, and record the outcome."""
    now = timezone.now()
    claimed = DatasetImport.objects.filter(
        Q(status=DatasetImport.Status.PENDING)
        | Q(status__in=[DatasetImport.Status.VALIDATING, DatasetImport.Status.WRITING],
            started_at__lt=now - STALE_IMPORT_AFTER),
        pk=import_id,
    ).update(status=DatasetImport.Status.VALIDATING, started_at=now, processed_lines=0)
    if claimed != 1:
        return  # another worker has it, or it is finished
    job = DatasetImport.objects.get(pk=import_id)

    def progress(done: int, total: int) -> None:
        if done >= total:
            DatasetImport.objects.filter(pk=import_id).update(
                processed_lines=done, total_lines=total, status=DatasetImport.Status.WRITING)
        else:
            DatasetImport.objects.filter(pk=import_id).update(processed_lines=done, total_lines=total)

    try:
        summary = dataset_import_file(
            data=bytes(job.payload), filename=job.filename, default_name=job.default_name, user=job.created_by,
            dataset_import=job, progress=progress,
        )
    except DatasetFileError as exc:
        DatasetImport.objects.filter(pk=import_id).update(
            status=DatasetImport.Status.FAILED, message=str(exc), errors=[p.as_dict() for p in exc.problems],
            finished_at=timezone.now(),
        )
        return
    except Exception as exc:
        DatasetImport.objects.filter(pk=import_id).update(
            status=DatasetImport.Status.FAILED, message=f"internal error: {exc}", finished_at=timezone.now())
        raise
    DatasetImport.objects.filter(pk=import_id).update(
        status=DatasetImport.Status.DONE, summary=summary.as_dict(), payload=b"", finished_at=timezone.now(),
        message=f"{summary.queries_added} new queries, {summary.responses_added} new results",
    )


def _clean_templates(fields: dict[str, Any]) -> dict[str, Any]:
    if "prompt_templates" in fields:
        try:
            fields["prompt_templates"] = validate_templates(fields["prompt_templates"] or {})
        except ValueError as exc:
            raise ServiceError("prompt_templates", str(exc)) from None
    return fields


def dataset_update(*, dataset: Dataset, user: User, **fields: Any) -> Dataset:
    """Change a dataset's description or prompt templates (queries and splits never change here)."""
    fields = _clean_templates({k: v for k, v in fields.items() if k in ("description", "prompt_templates")})
    if not fields:
        return dataset
    for key, value in fields.items():
        setattr(dataset, key, value)
    dataset.save(update_fields=[*fields, "updated_at"])
    activity_record(actor=user, verb="edited dataset", target=f"{dataset.name} ({', '.join(sorted(fields))})",
                    url=reverse("dataset-detail", args=[dataset.pk]))
    return dataset


def _clean_model_fields(fields: dict[str, Any]) -> dict[str, Any]:
    fields = _clean_templates(fields)
    key = fields.get("api_key") or ""
    if key and not (key.isascii() and key.isprintable() and " " not in key):
        # It travels in an HTTP header (Authorization: Bearer KEY), which holds printable ASCII only.
        raise ServiceError("api_key", "The API key must be printable ASCII without spaces.")
    if "default_params" in fields:
        try:
            fields["default_params"] = validate_sampling_params(fields["default_params"] or {})
        except ValueError as exc:
            raise ServiceError("default_params", str(exc)) from None
    if "base_url" in fields:
        try:
            fields["base_url"] = normalise_base_url(fields["base_url"] or "")
        except ValueError as exc:
            raise ServiceError("base_url", f"The URL {exc}.") from None
        refusal = providers.endpoint_refusal(fields["base_url"]) if fields["base_url"] else None
        if refusal is not None:
            raise ServiceError("base_url", f"Not allowed here: {refusal}.")
    return fields


def model_create(*, user: User, name: str, **fields: Any) -> LanguageModel:
    """Register a model endpoint (or an offline model when base_url is empty)."""
    fields = _clean_model_fields(fields)
    owner = owner_of(user)
    model = LanguageModel(name=name, created_by=owner, **fields)
    model.full_clean()
    model.save()
    activity_record(actor=user, verb="registered model", target=name, url=reverse("model-detail", args=[model.pk]))
    return model


def model_update(*, model: LanguageModel, user: User, **fields: Any) -> LanguageModel:
    """Change the given fields of a model endpoint and nothing else.

    A new base URL clears the stored API key unless a key comes with it: the key was given for the old
    endpoint, and whoever moves the model must not be able to send it elsewhere.
    """
    fields = _clean_model_fields(fields)
    if ("base_url" in fields and fields["base_url"] != model.base_url.rstrip("/") and not fields.get("api_key")
            and model.api_key):
        fields["api_key"] = ""
    if not fields:
        return model
    for key, value in fields.items():
        setattr(model, key, value)
    model.full_clean()
    # Updating only these fields keeps a concurrent writer's other changes.
    model.save(update_fields=[*fields, "updated_at"])
    changed = ", ".join(sorted(k if k != "api_key" else "api key" for k in fields))
    activity_record(actor=user, verb="edited model", target=f"{model.name} ({changed})",
                    url=reverse("model-detail", args=[model.pk]))
    return model


def model_set_active(*, model: LanguageModel, user: User, active: bool) -> LanguageModel:
    return model_update(model=model, user=user, is_active=active)


def model_test_connection(*, model: LanguageModel, user: User = None) -> providers.ConnectionCheck:
    """Ask the endpoint which models it serves, and remember the outcome on the model."""
    if model.is_offline:
        result = providers.ConnectionCheck(False, "offline model: it has no endpoint URL to call")
    else:
        result = providers.check_connection(base_url=model.base_url, api_key=model.api_key,
                                            model_id=model.model_id, timeout_s=settings.MODEL_CHECK_TIMEOUT_S)
    result = replace(result, message=scrub(result.message, (model.api_key,)))
    model.last_checked_at = timezone.now()
    model.last_check_ok = result.ok
    model.last_check_message = result.message
    model.save(update_fields=["last_checked_at", "last_check_ok", "last_check_message"])
    return result
