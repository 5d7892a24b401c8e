"""Validate the default sampling parameters stored with a model endpoint."""
from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

# name -> (kind, low, high); None means unbounded on that side.
_NUMERIC: dict[str, tuple[type, float | None, float | None]] = {
    "temperature": (float, 0.0, 2.0),
    "top_p": (float, 0.0, 1.0),
    "max_tokens": (int, 1, None),
    "seed": (int, None, None),
    "presence_penalty": (float, -2.0, 2.0),
    "frequency_penalty": (float, -2.0, 2.0),
    "top_k": (int, -1, None),
}
ALLOWED_PARAMS = tuple(sorted([*_NUMERIC, "stop"]))


def validate_sampling_params(params: Mapping[str, Any]) -> dict[str, Any]:
    """Return a cleaned copy of ``params``; raise ValueError naming the first bad key."""
    if not isinstance(params, Mapping):
        raise ValueError("must be an object such as {\"temperature\": 0.7, \"max_tokens\": 1024}")
    cleaned: dict[str, Any] = {}
    for key, value in params.items():
        if key == "stop":
            if isinstance(value, str):
                value = [value]
            if not isinstance(value, list) or not all(isinstance(s, str) and s for s in value) or len(value) > 4:
                raise ValueError("stop: must be a string or a list of at most 4 non-empty strings")
            cleaned[key] = value
            continue
        if key not in _NUMERIC:
            raise ValueError(f"{key}: unknown parameter; allowed: {', '.join(ALLOWED_PARAMS)}")
        kind, low, high = _NUMERIC[key]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ValueError(f"{key}: must be a number")
        if kind is int and not float(value).is_integer():
            raise ValueError(f"{key}: must be an integer")
        if (low is not None and value < low) or (high is not None and value > high):
            bounds = f"[{low if low is not None else '-inf'}, {high if high is not None else 'inf'}]"
            raise ValueError(f"{key}: {value} is outside {bounds}")
        cleaned[key] = int(value) if kind is int else float(value)
    return cleaned
