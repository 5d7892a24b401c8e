"""Grade by exact match after normalisation; Python literals (CRUXEval) compare by value."""
from __future__ import annotations

import ast
import re
import warnings
from typing import Any

from evaluation.core.grading.extraction import compared, extract_answer, response_answer, short
from evaluation.core.grading.registry import Grade, register_grader


def _canonical_literal(value: Any, depth: int = 0) -> str:
    """Return a canonical text for a Python literal: sets and dicts sorted, strings single-quoted."""
    if depth > 100:
        raise ValueError("literal nested too deeply")
    if isinstance(value, dict):
        items = sorted(f"{_canonical_literal(k, depth + 1)}: {_canonical_literal(v, depth + 1)}"
                       for k, v in value.items())
        return "{" + ", ".join(items) + "}"
    if isinstance(value, (set, frozenset)):
        items = sorted(_canonical_literal(v, depth + 1) for v in value)
        body = "{" + ", ".join(items) + "}" if items else "()"
        return body if isinstance(value, set) and items else f"{type(value).__name__}({body if items else ''})"
    if isinstance(value, list):
        return "[" + ", ".join(_canonical_literal(v, depth + 1) for v in value) + "]"
    if isinstance(value, tuple):
        inner = ", ".join(_canonical_literal(v, depth + 1) for v in value)
        return f"({inner},)" if len(value) == 1 else f"({inner})"
    return repr(value)


def _exact_key(text: str) -> str:
    """Return the canonical text of an answer; see ``_normalise_exact``."""
    fenced = re.fullmatch(r"\s*(?:```[\w+-]*\n?(.*?)\n?```|`([^`]*)`)\s*", text, re.DOTALL)
    if fenced:
        text = fenced.group(1) if fenced.group(1) is not None else fenced.group(2)
    if text == text.strip() and len(text) <= 20_000:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # "1abc" warns about an invalid decimal literal
                value = ast.literal_eval(text)
        except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
            pass
        else:
            # "6,8,8" is text a model wrote without quotes, and "(1, 2), (3, 4)" would not survive as the
            # right side of CRUXEval's assert: only a parenthesised tuple is a tuple.
            if not (isinstance(value, tuple) and value and not _parenthesised(text)):
                return _canonical_literal(value)
    # Any other text is a string. Surrounding spaces only survive in a JSON string, where they are part
    # of the value; a quote at either end is the model's attempt at a literal ("'148: b'148''").
    if text == text.strip():
        text = re.sub(r"^['\"]|['\"]$", "", text) if len(text) > 1 else text
    return repr(text)


def _parenthesised(text: str) -> bool:
    """Return whether a tuple literal's own brackets enclose it: "(1, 2)" yes, "(1, 2), (3, 4)" no."""
    try:
        node = ast.parse(text, mode="eval").body
    except (SyntaxError, ValueError, MemoryError, RecursionError):
        return False
    return isinstance(node, ast.Tuple) and bool(node.elts) and node.elts[0].col_offset > node.col_offset


def _normalise_exact(answer: str, **_: Any) -> str | None:
    """Return a canonical text: Python literals by value (repr-style), any other text as a string literal."""
    return _exact_key(answer)


def _exact_equal(key: str, gold_key: str) -> bool:
    """Return whether an answer key matches a gold key, a gold string also matching its bare text."""
    if key == gold_key:
        return True
    # A JSON answer field cannot tell 123314 from '123314': when the gold is a string, the answer's
    # canonical text standing for that string is accepted ("123314", "True", "[1, 2]" for '[1, 2]').
    if gold_key[:1] in ("'", '"') and key[:1] not in ("'", '"'):
        try:
            return bool(ast.literal_eval(gold_key) == key)
        except (ValueError, SyntaxError, MemoryError, RecursionError):
            return False
    return False


@register_grader("exact", description="Exact match after normalisation; Python literals compare by value.",
                 normalise=_normalise_exact)
def grade_exact(response: str, gold: str, **_: Any) -> Grade:
    """Grade by equality of the normalised answer and gold."""
    found = extract_answer(response)
    if found.answer is None:
        return Grade(False, 0.0, None, "no answer found in the response")
    where = response_answer(response)[1]
    # An empty JSON string is a real answer here: CRUXEval outputs can be ''.
    key, gold_key = _exact_key(found.answer), _exact_key(gold.strip())
    return compared(_exact_equal(key, gold_key), key, where=where, shown=short(key), gold=short(gold_key))
