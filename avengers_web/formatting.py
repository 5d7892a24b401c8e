"""What every page shows for a number that is not known, and the template filters that show it."""
from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from django import template

UNKNOWN = "–"  # as static/js/evaluation.js shows it too


def known_only(format_value: Callable[[Any], str]) -> Callable[[Any], str]:
    """Wrap a template filter so that None shows as ``UNKNOWN`` and only known values reach the formatter."""

    @functools.wraps(format_value)
    def show(value: Any) -> str:
        return UNKNOWN if value is None else format_value(value)

    return show


Formatter = Callable[[Any], str]


def number_filter(library: template.Library) -> Callable[[Formatter], Formatter]:
    """A decorator that registers a formatter of known numbers in ``library`` as a filter named after it; the
    filter shows None as ``UNKNOWN`` (``known_only``)."""

    def register(format_value: Formatter) -> Formatter:
        shown: Formatter = library.filter(format_value.__name__, known_only(format_value))
        return shown

    return register
