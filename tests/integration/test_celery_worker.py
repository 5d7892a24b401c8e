"""Imports run in a real Celery worker, fed through a real Redis."""
from __future__ import annotations

import time

import pytest

from evaluation.models import Dataset, DatasetImport, Query
from evaluation.services import dataset_import_create

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]


def wait_finished(job_id: int, timeout: float = 60) -> DatasetImport:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = DatasetImport.objects.get(pk=job_id)
        if job.is_finished:
            return job
        time.sleep(0.2)
    raise AssertionError(f"import {job_id} still {DatasetImport.objects.get(pk=job_id).status} after {timeout} s")


def test_a_worker_imports_an_upload_and_reports_progress(celery_worker_process, sample_records) -> None:  # type: ignore[no-untyped-def]
    job = dataset_import_create(data=sample_records.read_bytes(), filename="sample_records.jsonl")
    done = wait_finished(job.pk)
    assert done.status == "done", done.message
    assert done.processed_lines == done.total_lines and done.total_lines >= 384
    assert done.summary["queries_added"] == Query.objects.count() == 384
    assert Dataset.objects.count() == 14 and done.started_at and done.finished_at
    assert celery_worker_process.poll() is None


def test_a_bad_upload_fails_in_the_worker_and_writes_nothing(celery_worker_process) -> None:  # type: ignore[no-untyped-def]
    job = dataset_import_create(data=b'{"query": "ok", "dataset": "d"}\n{"query": "bad", "dataset": "d", "split": "x"}',
                                filename="bad.jsonl")
    done = wait_finished(job.pk)
    assert done.status == "failed" and "line 2, split" in done.message
    assert done.errors == [{"line": 2, "field": "split", "message": "'x' is not 'train' or 'test'"}]
    assert Dataset.objects.count() == 0 and Query.objects.count() == 0


def test_a_finished_import_delivered_twice_is_not_repeated(celery_worker_process) -> None:  # type: ignore[no-untyped-def]
    from evaluation.tasks import dataset_import_run

    job = dataset_import_create(data=b"query\nq1\nq2\n", filename="x.csv", default_name="twice")
    first = wait_finished(job.pk)
    dataset_import_run.delay(job.pk)  # a duplicate delivery, as acks_late allows
    time.sleep(2)
    again = DatasetImport.objects.get(pk=job.pk)
    assert (again.status, again.finished_at) == ("done", first.finished_at)
    assert Query.objects.filter(dataset__name="twice").count() == 2
