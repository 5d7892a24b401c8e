"""The graders' registry is the one table: a grader added in one module is graded, listed and voted with."""
from __future__ import annotations

import importlib.util
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

from evaluation.core import datasets, grading
from evaluation.core.grading import (
    GRADERS,
    QUERY_OPTIONS,
    TASK_TYPES,
    extract_answer,
    grade,
    is_free_text,
    normaliser,
    register_grader,
    unregister_grader,
)
from routing.core.voting import Sample, majority_vote

# The whole of a new grader: one module that registers itself when imported.
THROWAWAY_GRADER = '''
from __future__ import annotations

import re
from typing import Any

from evaluation.core.grading import Grade, extract_answer, register_grader


def normalise_word(answer: str, **_: Any) -> str | None:
    """Return the letters of an answer, lower-cased: "MARS!" -> "mars"."""
    return "".join(re.findall(r"[a-z]", answer.lower())) or None


@register_grader("word", description="One word: its letters equal the gold's, case and punctuation ignored.",
                 normalise=normalise_word, options=("stem", "strict"), query_options=("stem",))
def grade_word(response: str, gold: str, **_: Any) -> Grade:
    """Grade a one-word answer by its letters."""
    key = normalise_word(extract_answer(response).answer or "")
    correct = key is not None and key == normalise_word(gold)
    return Grade(correct, float(correct), key, f"word {key!r} against gold {gold!r}")
'''


@pytest.fixture
def word_grader(tmp_path: Path) -> Iterator[ModuleType]:
    path = tmp_path / "word_grader.py"
    path.write_text(THROWAWAY_GRADER)
    spec = importlib.util.spec_from_file_location("word_grader", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    try:
        yield module
    finally:
        if "word" in GRADERS:
            unregister_grader("word")
        sys.modules.pop("word_grader", None)


def test_a_grader_added_in_one_module_is_graded_listed_and_parsed(word_grader: ModuleType) -> None:
    assert grade("word", "Let me think.\nAnswer: MARS!", "mars").correct
    assert not grade("word", "Answer: Venus", "mars").correct
    assert TASK_TYPES[-1] == "word" and "word" in TASK_TYPES and "word" in datasets.TASK_TYPES
    assert GRADERS["word"].description and GRADERS["word"].higher_is_better is True
    assert "stem" in QUERY_OPTIONS and "strict" not in QUERY_OPTIONS
    assert not is_free_text("word")
    record = {"id": "q1", "dataset": "planets", "query": "Red planet?", "gold": "Mars", "task_type": "word"}
    (parsed,) = datasets.parse_dataset_file(json.dumps(record).encode(), filename="p.jsonl").records
    assert parsed.task_type == "word"


def test_a_grader_added_in_one_module_is_used_for_voting(word_grader: ModuleType) -> None:
    answers = ["Answer: Mars.", "**MARS**", "Answer: Venus", "the answer is mars"]
    votes = [Sample(model="m", answer=extract_answer(text).answer, index=i) for i, text in enumerate(answers)]
    vote = majority_vote(votes, normaliser("word"))
    assert vote.answer == "mars" and vote.tally == (("mars", 3), ("venus", 1))


def test_unregistering_a_grader_removes_it_everywhere(word_grader: ModuleType) -> None:
    unregister_grader("word")
    assert "word" not in TASK_TYPES and "stem" not in QUERY_OPTIONS
    with pytest.raises(ValueError, match="unknown task type"):
        grade("word", "mars", "mars")
    record = {"id": "q1", "dataset": "planets", "query": "Red planet?", "gold": "Mars", "task_type": "word"}
    with pytest.raises(datasets.DatasetFileError):
        datasets.parse_dataset_file(json.dumps(record).encode(), filename="p.jsonl")


def test_the_built_in_task_types_keep_their_order_and_metadata() -> None:
    assert TASK_TYPES == ("math", "mcq", "code", "label", "qa", "exact")
    assert datasets.TASK_TYPES is TASK_TYPES
    assert [name for name in TASK_TYPES if is_free_text(name)] == ["code", "qa"]
    # A dataset's metadata sets what a query is about, never how the machine runs it (no allow_weak_sandbox).
    assert set(QUERY_OPTIONS) == {"choices", "labels", "tests", "entry_point"}
    assert all(set(g.query_options) <= set(g.options) for g in GRADERS.values())
    assert all(callable(g.normalise) for g in GRADERS.values())


def test_it_refuses_a_second_grader_under_one_name_and_query_options_it_does_not_read() -> None:
    with pytest.raises(ValueError, match="already registered"):
        register_grader("math", description="again", normalise=str)(grading.GRADERS["math"].function)
    with pytest.raises(ValueError, match="query_options"):
        register_grader("other", description="x", normalise=str, query_options=("tests",))
    assert "other" not in TASK_TYPES


def test_a_run_grades_each_query_with_the_options_its_grader_declares() -> None:
    settings = {"SANDBOX_ALLOW_WEAK": True}
    metadata = {"tests": "assert f() == 1", "choices": ["a", "b"], "allow_weak_sandbox": True}
    # Code takes its own query options, the query's text as its prompt and the sandbox setting (never the
    # metadata's); other graders take only their own query options.
    assert grading.grader_options("code", metadata=metadata, query_text="Write f.", setting=settings.__getitem__) == {
        "tests": "assert f() == 1", "prompt": "Write f.", "allow_weak_sandbox": True}
    assert grading.grader_options("mcq", metadata=metadata, query_text="Pick.", setting=settings.__getitem__) == {
        "choices": ["a", "b"]}
    assert grading.grader_options("qa", metadata=metadata, query_text="Who?", setting=settings.__getitem__) == {}
    with pytest.raises(ValueError, match="unknown task type"):
        grading.grader_options("nope", metadata={}, query_text="", setting=settings.__getitem__)


def test_it_refuses_settings_a_dataset_could_set_and_options_it_does_not_read() -> None:
    with pytest.raises(ValueError, match="setting_options"):
        register_grader("other", description="x", normalise=str, options=("weak",), query_options=("weak",),
                        setting_options={"weak": "SANDBOX_ALLOW_WEAK"})
    with pytest.raises(ValueError, match="query_text_option"):
        register_grader("other", description="x", normalise=str, query_text_option="prompt")
    assert "other" not in TASK_TYPES
