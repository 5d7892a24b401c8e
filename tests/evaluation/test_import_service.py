"""Importing datasets into PostgreSQL: counts, splits that never change, idempotence, all-or-nothing."""
from __future__ import annotations

import json

import pytest
from django.core.management import CommandError, call_command

from evaluation.core.datasets import DatasetFileError
from evaluation.models import Dataset, LanguageModel, ModelResponse, Query
from evaluation.services import dataset_import_file

pytestmark = pytest.mark.django_db


def counts() -> tuple[int, int, int, int, int, int]:
    return (Dataset.objects.count(), Query.objects.count(), LanguageModel.objects.count(),
            Query.objects.filter(split="train").count(), Query.objects.filter(split="test").count(),
            ModelResponse.objects.count())


def test_the_real_records_give_14_datasets_5989_queries_and_9_models(llmrouter_records) -> None:  # type: ignore[no-untyped-def]
    summary = dataset_import_file(data=llmrouter_records.read_bytes(), filename="records.jsonl")
    assert counts()[:5] == (14, 5989, 9, 5608, 381)
    assert summary.queries_added == 5989 and sorted(summary.models_created) == sorted(
        LanguageModel.objects.values_list("name", flat=True))
    assert all(m.is_offline for m in LanguageModel.objects.all())
    # Every score in the file is a response row: one per model that the line scores.
    expected = sum(len(json.loads(line)["scores"]) for line in llmrouter_records.read_text().split("\n") if line)
    assert ModelResponse.objects.count() == expected
    assert set(Query.objects.values_list("split_source", flat=True)) == {Query.SplitSource.FILE}
    before = counts()
    again = dataset_import_file(data=llmrouter_records.read_bytes(), filename="records.jsonl")
    assert counts() == before
    assert (again.queries_added, again.responses_added, again.models_created) == (0, 0, [])
    assert again.queries_existing == 5989


def test_queries_without_a_split_are_split_70_30_with_the_recorded_seed() -> None:
    data = "\n".join(json.dumps({"query": f"question {i}", "gold": str(i)}) for i in range(100)).encode()
    summary = dataset_import_file(data=data, filename="q.jsonl", default_name="toy", split_seed=7)
    dataset = Dataset.objects.get(name="toy")
    assert dataset.split_seed == 7 and summary.datasets[0].created
    assert (Query.objects.filter(dataset=dataset, split="test").count(), Query.objects.filter(split="train").count()) == (30, 70)
    assert set(Query.objects.values_list("split_source", flat=True)) == {"seeded"}
    splits = dict(Query.objects.values_list("external_id", "split"))
    # Appending more queries to the same name keeps every stored split and splits only the new ones.
    more = "\n".join(json.dumps({"query": f"question {i}"}) for i in range(100, 150)).encode()
    appended = dataset_import_file(data=data + b"\n" + more, filename="q.jsonl", default_name="toy")
    assert appended.queries_added == 50 and appended.queries_existing == 100
    assert {k: v for k, v in Query.objects.values_list("external_id", "split") if k in splits} == splits
    assert Query.objects.filter(dataset=dataset, split="test").count() == 30 + 15


def test_the_same_seed_gives_the_same_split_in_another_database_state() -> None:
    data = "\n".join(json.dumps({"query": f"q{i}"}) for i in range(40)).encode()
    dataset_import_file(data=data, filename="a.jsonl", default_name="first", split_seed=3)
    dataset_import_file(data=data, filename="a.jsonl", default_name="second", split_seed=3)
    first = dict(Query.objects.filter(dataset__name="first").values_list("external_id", "split"))
    second = dict(Query.objects.filter(dataset__name="second").values_list("external_id", "split"))
    assert first == second


def test_a_file_with_a_problem_writes_nothing_at_all(sample_records) -> None:  # type: ignore[no-untyped-def]
    lines = [line for line in sample_records.read_text().split("\n") if line]
    bad = json.loads(lines[-1])
    bad["scores"][next(iter(bad["scores"]))] = 7
    lines[-1] = json.dumps(bad)
    with pytest.raises(DatasetFileError, match=rf"line {len(lines)}, scores\..*: 7 is outside \[0, 1\]"):
        dataset_import_file(data="\n".join(lines).encode(), filename="r.jsonl")
    assert counts() == (0, 0, 0, 0, 0, 0)


def test_a_changed_query_text_under_an_existing_id_is_refused_and_nothing_is_written() -> None:
    dataset_import_file(data=b'{"id": "1", "query": "old"}', filename="a.jsonl", default_name="d")
    before = counts()
    with pytest.raises(DatasetFileError, match="line 2, query: id '1' is already in dataset 'd' with a different"):
        dataset_import_file(data=b'{"id": "2", "query": "new one"}\n{"id": "1", "query": "changed"}',
                            filename="a.jsonl", default_name="d")
    assert counts() == before


def test_a_stored_split_never_changes() -> None:
    dataset_import_file(data=b'{"id": "1", "query": "q", "split": "test"}', filename="a.jsonl", default_name="d")
    with pytest.raises(DatasetFileError, match="already in the test split"):
        dataset_import_file(data=b'{"id": "1", "query": "q", "split": "train"}', filename="a.jsonl", default_name="d")
    assert Query.objects.get().split == "test"


def test_new_results_for_existing_queries_are_added_once() -> None:
    dataset_import_file(data=b'{"id": "1", "dataset": "d", "query": "q", "scores": {"a": 1}}', filename="r.jsonl")
    summary = dataset_import_file(data=b'{"id": "1", "dataset": "d", "query": "q", "scores": {"a": 0, "b": 0.5}}',
                                  filename="r.jsonl")
    assert (summary.queries_added, summary.responses_added, summary.responses_existing) == (0, 1, 1)
    assert summary.models_created == ["b"]
    # The first stored result wins: an import never overwrites a grade.
    assert ModelResponse.objects.get(model__name="a").score == 1.0
    b = ModelResponse.objects.get(model__name="b")
    assert (b.score, b.correct, b.source) == (0.5, None, "imported")


def test_a_file_without_a_dataset_column_needs_a_name() -> None:
    with pytest.raises(DatasetFileError, match="line 2, dataset: the file has no dataset column"):
        dataset_import_file(data=b"query\nq1\n", filename="x.csv")
    with pytest.raises(DatasetFileError, match="not a valid dataset name"):
        dataset_import_file(data=b"query\nq1\n", filename="x.csv", default_name="bad name!")
    assert counts()[0] == 0


def test_the_import_command_prints_a_summary_and_refuses_bad_files(tmp_path, capsys) -> None:  # type: ignore[no-untyped-def]
    good = tmp_path / "good.csv"
    good.write_text("query,gold,task_type\nTwo plus two?,4,math\nThree plus one?,4,math\n")
    call_command("import_dataset", str(good), "--name", "arith", "--split-seed", "5")
    out = capsys.readouterr().out
    assert "arith: created, 2 new queries" in out and Dataset.objects.get(name="arith").split_seed == 5
    bad = tmp_path / "bad.csv"
    bad.write_bytes(b"query,gold\nok,1\n\xffbad,2\n")
    with pytest.raises(CommandError, match=r"nothing was imported\.\n  line 3: not UTF-8"):
        call_command("import_dataset", str(bad), "--name", "arith")
    with pytest.raises(CommandError, match="cannot read"):
        call_command("import_dataset", str(tmp_path / "missing.jsonl"))
    assert Query.objects.count() == 2
