"""Template filters that format evaluation numbers exactly as static/js/evaluation.js does."""
from __future__ import annotations

import json

from django import template

from avengers_web.formatting import UNKNOWN, number_filter
from evaluation.core.secrets import url_without_credentials

register = template.Library()
number = number_filter(register)


@register.filter
def percent(numerator: int | None, denominator: int | None) -> str:
    """Return numerator/denominator as a percentage with one decimal, rounded half up; "–" without a denominator."""
    if not denominator or numerator is None:
        return UNKNOWN
    # Integer arithmetic rounds half up like JavaScript's Math.round, so the page and the script agree.
    tenths = (2000 * numerator + denominator) // (2 * denominator)
    return f"{tenths // 10}.{tenths % 10}%"


@number
def whole_percent(fraction: float) -> str:
    """Return a fraction in [0, 1] as a whole percentage, e.g. "45%"; "–" when unknown."""
    return f"{int(fraction * 100 + 0.5)}%"


@number
def rate(per_second: float) -> str:
    """Return samples per second with one decimal; "–" before the first sample."""
    return f"{int(per_second * 10 + 0.5) / 10:.1f}/s"


@number
def duration(seconds: float) -> str:
    """Return seconds as "42 s", "3 min 5 s" or "2 h 4 min"; "–" when unknown."""
    total = int(seconds + 0.5)
    if total < 60:
        return f"{total} s"
    if total < 3600:
        return f"{total // 60} min {total % 60} s"
    return f"{total // 3600} h {total % 3600 // 60} min"


@register.filter
def as_json(value: object) -> str:
    """Return a value as compact JSON with sorted keys (parameters, templates)."""
    return json.dumps(value, sort_keys=True, ensure_ascii=False)


@register.filter
def without_credentials(url: str) -> str:
    """Return an endpoint URL without its user:password@ part."""
    return url_without_credentials(url or "")
