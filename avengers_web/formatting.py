"""What every page shows for a number that is not known, and a filter wrapper that shows it."""
from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

UNKNOWN = "–"  # as static/js/evaluation.js shows it too


def known_only(format_value: Callable[[Any], str]) -> Callable[[Any], str]:
    """Wrap a template filter so that None shows as ``UNKNOWN`` and only known values reach the formatter."""

    @functools.wraps(format_value)
    def show(value: Any) -> str:
        return UNKNOWN if value is None else format_value(value)

    return show
