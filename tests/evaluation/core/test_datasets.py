"""The dataset parser: formats, fields, and a clear, line-numbered refusal of bad input."""
from __future__ import annotations

import json
from collections import Counter

import pytest

from evaluation.core.datasets import DatasetFileError, parse_dataset_file, seeded_split


def jsonl(*rows: dict) -> bytes:
    return "\n".join(json.dumps(r) for r in rows).encode()


def problems_of(data: bytes, **kwargs) -> list[str]:
    with pytest.raises(DatasetFileError) as info:
        parse_dataset_file(data, **kwargs)
    return [str(p) for p in info.value.problems]


def test_it_reads_records_with_scores_responses_and_extra_fields() -> None:
    data = jsonl({"id": "a", "dataset": "gsm8k", "query": "1+1?", "gold": 2, "split": "TRAIN", "task_type": "math",
                  "scores": {"m1": 1, "m2": 0.5}, "responses": {"m1": "2"}, "choices": ["x"]})
    parsed = parse_dataset_file(data, filename="r.jsonl")
    (record,) = parsed.records
    assert (record.id, record.dataset, record.gold, record.split) == ("a", "gsm8k", "2", "train")
    assert record.scores == {"m1": 1.0, "m2": 0.5}
    assert record.responses == {"m1": "2"}
    assert record.metadata == {"choices": ["x"]}
    assert parsed.model_names == ["m1", "m2"]


def test_it_reads_csv_with_aliases_and_per_model_columns() -> None:
    data = b"question,answer,split,score:m1,response:m1\n\"What, exactly?\",42,test,0.25,\"forty\ntwo\"\nWhy?,no,,,\n"
    parsed = parse_dataset_file(data, filename="q.csv")
    assert parsed.format == "csv"
    first, second = parsed.records
    assert (first.query, first.gold, first.split, first.scores, first.responses) == (
        "What, exactly?", "42", "test", {"m1": 0.25}, {"m1": "forty\ntwo"})
    assert second.line == 4 and second.split is None and second.scores == {}


def test_it_derives_ids_from_the_text_when_the_file_has_none() -> None:
    a = parse_dataset_file(b'{"query": "same"}\n{"query": "other"}', filename="x.jsonl").records
    b = parse_dataset_file(b'query\nsame\n', filename="x.csv").records
    assert a[0].id == b[0].id and not a[0].id_given and a[0].id != a[1].id


def test_a_line_separator_inside_a_string_is_not_a_new_line() -> None:
    parsed = parse_dataset_file(jsonl({"query": "a\u2028b", "id": 1}), filename="x.jsonl")
    assert parsed.records[0].query == "a\u2028b"


@pytest.mark.parametrize(("data", "filename", "expected"), [
    (b'{"query": "ok"}\n\xff\xfe{"query": "bad"}', "x.jsonl", "line 2: not UTF-8"),
    (b'[{"query": "a"}]', "x.json", "JSON array"),
    (b"PK\x03\x04", "x.xlsx", "unsupported file type .xlsx"),
    (b"text,label\nhello,1\n", "x.csv", "line 1, header: no query column"),
    (b'{"query": "a", "id": "1"}\n{"query": "b", "id": "1"}', "x.jsonl", "line 2, id: id '1' repeats line 1"),
    (b'{"query": "a", "scores": {"m": 1.5}}', "x.jsonl", "line 1, scores.m: 1.5 is outside [0, 1]"),
    (b'{"query": "a", "scores": {"m": -0.1}}', "x.jsonl", "outside [0, 1]"),
    (b'{"query": "a", "scores": {"m": true}}', "x.jsonl", "scores.m: True is not a number"),
    (b'{"query": "a"}\n{"query": "b", "split": "dev"}', "x.jsonl", "line 2, split: 'dev' is not 'train' or 'test'"),
    (b'{"query": ""}', "x.jsonl", "line 1, query: must be a non-empty string"),
    (b'{"gold": "x"}', "x.jsonl", "line 1, query: missing"),
    (b'{"query": "a"}\n{"query": "b",}', "x.jsonl", "line 2: not valid JSON"),
    (b'{"query": "a", "task_type": "essay"}', "x.jsonl", "task_type: 'essay' is not one of"),
    (b"   \n\n", "x.jsonl", "file: the file is empty"),
    (b"query,score:m\nq,high\n", "x.csv", "line 2, scores.m: 'high' is not a number"),
])
def test_it_refuses_bad_input_naming_the_line_and_the_problem(data: bytes, filename: str, expected: str) -> None:
    problems = problems_of(data, filename=filename)
    assert any(expected in p for p in problems), problems


def test_it_refuses_files_above_the_size_limit() -> None:
    problems = problems_of(b'{"query": "a"}' * 100, filename="x.jsonl", max_bytes=100)
    assert "above the limit of 100 bytes" in problems[0]


def test_it_lists_every_problem_up_to_the_limit() -> None:
    data = "\n".join(json.dumps({"query": "q", "id": i, "scores": {"m": 2}}) for i in range(10)).encode()
    assert len(problems_of(data, filename="x.jsonl", max_problems=4)) == 4
    assert len(problems_of(data, filename="x.jsonl")) == 10


def test_seeded_split_is_70_30_and_does_not_depend_on_order() -> None:
    ids = [f"q{i}" for i in range(1000)]
    split = seeded_split(ids, seed=42)
    assert Counter(split.values()) == {"train": 700, "test": 300}
    assert seeded_split(list(reversed(ids)), seed=42) == split
    assert seeded_split(ids, seed=43) != split


def test_the_real_records_file_parses_with_its_splits(llmrouter_records) -> None:  # type: ignore[no-untyped-def]
    parsed = parse_dataset_file(llmrouter_records.read_bytes(), filename="records.jsonl")
    assert len(parsed.records) == 5989
    assert Counter(r.split for r in parsed.records) == {"train": 5608, "test": 381}
    assert len(parsed.model_names) == 9
