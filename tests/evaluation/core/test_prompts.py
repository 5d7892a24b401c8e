"""Prompt templates: literal placeholders, the lookup order, validation, and stable keys."""
from __future__ import annotations

import pytest

from evaluation.core.datasets import TASK_TYPES
from evaluation.core.prompts import (
    DEFAULT_TEMPLATES,
    cache_key,
    params_key,
    render,
    resolve_template,
    validate_templates,
)


def test_every_task_type_has_a_default_template_with_the_query() -> None:
    for task_type in TASK_TYPES:
        assert "{query}" in DEFAULT_TEMPLATES[task_type]
    assert "\\boxed" in DEFAULT_TEMPLATES["math"] and "Answer: X" in DEFAULT_TEMPLATES["mcq"]
    assert "```python" in DEFAULT_TEMPLATES["code"]


def test_render_replaces_placeholders_literally_so_latex_braces_survive() -> None:
    prompt = render("Solve: {query} Put it in \\boxed{}.", "Find $\\frac{1}{2} + x^{2}$ when {x} = 1")
    assert prompt == "Solve: Find $\\frac{1}{2} + x^{2}$ when {x} = 1 Put it in \\boxed{}."


def test_render_lists_the_choices_as_lettered_lines_or_leaves_nothing() -> None:
    assert render("{query}\n{choices}\nAnswer:", "Pick one.", choices=["red", "blue"]) == "Pick one.\nA. red\nB. blue\nAnswer:"
    assert render("{query}\n{choices}\n\n\nAnswer:", "Pick one.") == "Pick one.\n\nAnswer:"
    assert render("{query} {choices}", "Q", choices={"X": "one", "Y": "two"}) == "Q X. one\nY. two"


def test_the_model_layer_wins_then_the_dataset_then_the_defaults() -> None:
    model, dataset = {"": "M {query}"}, {"math": "D {query}"}
    assert resolve_template("math", model, dataset) == "M {query}"
    assert resolve_template("math", {"math": "MM {query}", "": "M {query}"}, dataset) == "MM {query}"
    assert resolve_template("math", {}, dataset) == "D {query}"
    assert resolve_template("qa", None, dataset) == DEFAULT_TEMPLATES["qa"]
    assert resolve_template("", None, None) == "{query}"


@pytest.mark.parametrize(("templates", "message"), [
    ([], "must be an object"),
    ({"poetry": "{query}"}, "unknown task type"),
    ({"math": "no placeholder"}, "must be text containing {query}"),
    ({"math": 3}, "must be text containing {query}"),
    ({"qa": "{query}" + "x" * 20_000}, "longer than"),
])
def test_bad_templates_are_refused_with_the_reason(templates, message) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ValueError, match=message):
        validate_templates(templates)


def test_keys_are_stable_and_change_with_what_changes_the_answer() -> None:
    key = params_key({"temperature": 0.7, "seed": 1}, "{query}")
    assert key == params_key({"seed": 1, "temperature": 0.7}, "{query}") and len(key) == 32
    assert key != params_key({"temperature": 0.8, "seed": 1}, "{query}")
    assert key != params_key({"temperature": 0.7, "seed": 1}, "Q: {query}")
    messages = [{"role": "user", "content": "hi"}]
    base = cache_key(base_url="http://h/v1/", model="m", messages=messages, params={"seed": 1})
    assert base == cache_key(base_url="http://h/v1", model="m", messages=messages, params={"seed": 1})
    assert base != cache_key(base_url="http://h/v1", model="m", messages=messages, params={"seed": 2})
    assert base != cache_key(base_url="http://h/v1", model="other", messages=messages, params={"seed": 1})
