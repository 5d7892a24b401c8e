"""The abstract bases of the apps' tables: job statuses declared in one line behave as written-out TextChoices."""
from __future__ import annotations

import pickle

from django.db import models

from evaluation.models import Dataset, DatasetImport, EvaluationRun, LanguageModel
from routing.models import EmbeddingJob, RouterSnapshot


class WrittenOut(models.TextChoices):
    PENDING = "pending"
    RUNNING = "running"
    CANCELLED = "cancelled"
    DONE = "done"


def test_job_statuses_are_the_choices_a_written_out_class_has_and_pickle_by_their_place() -> None:
    assert EvaluationRun.Status.choices == WrittenOut.choices
    assert EvaluationRun.Status.DONE == "done" and EvaluationRun.Status.DONE.label == "Done"
    for job in (EvaluationRun, DatasetImport, EmbeddingJob):
        assert job.Status.__qualname__ == f"{job.__name__}.Status" and job.Status.__module__ == job.__module__
        assert pickle.loads(pickle.dumps(job.Status.PENDING)) is job.Status.PENDING


def test_a_job_is_finished_in_its_own_ending_statuses() -> None:
    assert EvaluationRun(status="cancelled").is_finished and not EvaluationRun(status="running").is_finished
    assert DatasetImport(status="failed").is_finished and EmbeddingJob(status="done").is_finished
    assert not EmbeddingJob(status="pending").is_finished


def test_every_owned_table_keeps_who_made_it_and_when() -> None:
    for table in (Dataset, LanguageModel, DatasetImport, EvaluationRun, EmbeddingJob, RouterSnapshot):
        names = {field.name for field in table._meta.get_fields()}
        assert {"created_by", "created_at"} <= names, table
    assert EvaluationRun._meta.get_field("started_at").help_text == "When it was last started or resumed."
    assert str(Dataset(name="arith")) == "arith" and Dataset._meta.ordering == ["name"]
    assert EvaluationRun._meta.ordering == ["-created_at"]
