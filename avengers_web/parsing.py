"""Parse untrusted text safely: ids of ASCII digits, JSON bounded in depth and free of NUL characters.

No Django: views, forms, the API's parser and the middleware share it.
"""
from __future__ import annotations

import json
import re
from typing import Any

import numpy as np

# PostgreSQL's bigint: a larger id matches no row, and psycopg would refuse to send it.
MAX_ID = 2**63 - 1
# Deeper JSON is refused before it is parsed: Python's parser recurses once per level (RecursionError near 1,000),
# and no request of this API needs more than a handful of levels.
MAX_JSON_DEPTH = 64

_DIGITS = re.compile(r"[0-9]+")
# A JSON string's "\u0000" escape, not preceded by an escaped backslash ("\\u0000" is the text \u0000).
_NUL_ESCAPE = re.compile(rb"(?<!\\)(?:\\\\)*\\u0000")
# A JSON string (escapes included), so that the brackets inside strings are not counted.
_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")
_STEPS = bytes.maketrans(b"[{]}", b"\x01\x01\xff\xff")


def parse_id(value: object) -> int | None:
    """Return the id that ``value`` spells in ASCII digits (``"12"``, ``12``), or None for anything else."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        number = value
    elif isinstance(value, str) and _DIGITS.fullmatch(value):  # "²".isdigit() is true; int("²") fails
        number = int(value)
    else:
        return None
    return number if 0 <= number <= MAX_ID else None


def json_depth(data: bytes | str) -> int:
    """Return how deeply arrays and objects nest in the JSON text ``data``, in linear time, without parsing it."""
    raw = data.encode("utf-8", "surrogatepass") if isinstance(data, str) else data
    brackets = _STRING.sub(b"", raw).translate(_STEPS, _NOT_BRACKETS)
    if not brackets:
        return 0
    # +1 per opening and -1 per closing bracket as signed bytes: the running sum's peak is the depth.
    return max(0, int(np.frombuffer(brackets, dtype=np.int8).cumsum(dtype=np.int64).max()))


def json_problem(data: bytes | str, *, max_depth: int = MAX_JSON_DEPTH) -> str | None:
    """Say what makes the JSON text ``data`` unsafe to parse or to store, or None when it is fine."""
    raw = data.encode("utf-8", "surrogatepass") if isinstance(data, str) else data
    if json_depth(raw) > max_depth:
        return f"JSON nested more than {max_depth} levels deep"
    if b"\x00" in raw or (b"\\u0000" in raw and _NUL_ESCAPE.search(raw)):
        return "JSON text with a NUL character (\\u0000), which cannot be stored"
    return None


def loads_json(text: str, *, max_depth: int = MAX_JSON_DEPTH) -> Any:
    """``json.loads`` for untrusted text: raise ValueError (with a message for a person) on unsafe JSON."""
    problem = json_problem(text, max_depth=max_depth)
    if problem is not None:
        raise ValueError(problem)
    return json.loads(text)


def has_nul(*texts: str) -> bool:
    """Whether any of ``texts`` holds a NUL character, which PostgreSQL refuses in text."""
    return any("\x00" in text for text in texts)
