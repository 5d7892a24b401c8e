"""Prompt templates per task type, and the key that says which generation settings made a response.

A template is plain text with the placeholder ``{query}`` (and, for multiple choice, optionally
``{choices}``). Placeholders are replaced literally, never with ``str.format``, because maths
queries are full of LaTeX braces. Templates are looked up in this order: the model's own
templates, then the dataset's, then ``DEFAULT_TEMPLATES``. Within a layer, a template for the
task type wins over one stored under "" (for every task type).
"""
from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from typing import Any

from evaluation.core.grading import TASK_TYPES

PLACEHOLDER = "{query}"
CHOICES_PLACEHOLDER = "{choices}"
MAX_TEMPLATE_LENGTH = 20_000
GENERIC = ""  # a template stored under "" applies to every task type that has none of its own

DEFAULT_TEMPLATES: dict[str, str] = {
    "math": (
        "{query}\n\nSolve the problem step by step. Put the final answer, and nothing else, inside "
        "\\boxed{...} at the end."
    ),
    "mcq": (
        "{query}\n{choices}\n\nThink it through, then finish with a last line of the form "
        "\"Answer: X\", where X is the letter of the correct option."
    ),
    "code": (
        "{query}\n\nWrite a complete, self-contained Python solution. Put the whole program in a single "
        "```python fenced code block."
    ),
    "label": "{query}\n\nReply with the label only, on a last line of the form \"Answer: LABEL\".",
    "qa": "{query}\n\nAnswer briefly. Finish with a last line of the form \"Answer: ...\".",
    "exact": "{query}\n\nFinish with a last line of the form \"Answer: ...\".",
    GENERIC: "{query}",
}


def validate_templates(templates: Any) -> dict[str, str]:
    """Return a cleaned copy of a task type -> template mapping; raise ValueError naming the problem."""
    if not isinstance(templates, Mapping):
        raise ValueError('must be an object mapping a task type to a template, e.g. {"math": "{query} ..."}')
    cleaned: dict[str, str] = {}
    for task_type, template in templates.items():
        if task_type not in (*TASK_TYPES, GENERIC):
            raise ValueError(f"{task_type!r}: unknown task type; use one of {', '.join(TASK_TYPES)} (or \"\" for all)")
        if not isinstance(template, str) or PLACEHOLDER not in template:
            raise ValueError(f"{task_type or 'default'}: the template must be text containing {PLACEHOLDER}")
        if len(template) > MAX_TEMPLATE_LENGTH:
            raise ValueError(f"{task_type or 'default'}: the template is longer than {MAX_TEMPLATE_LENGTH} characters")
        cleaned[task_type] = template
    return cleaned


def resolve_template(task_type: str, *layers: Mapping[str, str] | None) -> str:
    """Return the template for ``task_type`` from the first layer that has one for it or for all, else the default."""
    for layer in layers:
        if layer and task_type in layer:
            return layer[task_type]
        if layer and GENERIC in layer:
            return layer[GENERIC]
    return DEFAULT_TEMPLATES.get(task_type, DEFAULT_TEMPLATES[GENERIC])


def format_choices(choices: Sequence[str] | Mapping[str, str] | None) -> str:
    """Return options as lines "A. text"; empty when there are none (they are often in the query already)."""
    if not choices:
        return ""
    items = choices.items() if isinstance(choices, Mapping) else zip("ABCDEFGHIJKLMNOPQRSTUVWXYZ", choices)
    return "\n".join(f"{letter}. {text}" for letter, text in items)


def render(template: str, query: str, *, choices: Sequence[str] | Mapping[str, str] | None = None) -> str:
    """Fill the template with the query (and the options, if any) and trim blank runs it leaves."""
    text = template.replace(CHOICES_PLACEHOLDER, format_choices(choices))
    text = text.replace(PLACEHOLDER, query)
    while "\n\n\n" in text:
        text = text.replace("\n\n\n", "\n\n")
    return text.strip()


def params_key(params: Mapping[str, Any], template: str) -> str:
    """Return a stable key for (sampling parameters, template): responses made with the same key are the same work."""
    canonical = json.dumps({"params": dict(params), "template": template}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:32]


def cache_key(*, base_url: str, model: str, messages: Sequence[Mapping[str, str]], params: Mapping[str, Any]) -> str:
    """Return the key of one request in the response cache (endpoint, served model, prompt and sampling parameters)."""
    canonical = json.dumps(
        {"url": base_url.rstrip("/"), "model": model, "messages": [dict(m) for m in messages], "params": dict(params)},
        sort_keys=True, separators=(",", ":"), ensure_ascii=False,
    )
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()
