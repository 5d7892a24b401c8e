"""Template helpers for the routing pages: accuracies, differences, heatmap colours and sortable headers."""
from __future__ import annotations

from django import template
from django.utils.html import format_html
from django.utils.safestring import SafeString

from avengers_web.formatting import number_filter

register = template.Library()
number = number_filter(register)

# Viridis at five stops: perceptually even, readable in grey and by people with colour-blindness.
_STOPS = ((0.0, (68, 1, 84)), (0.25, (59, 82, 139)), (0.5, (33, 145, 140)), (0.75, (94, 201, 98)),
          (1.0, (253, 231, 37)))


@number
def accuracy(value: float) -> str:
    """Return a held-out accuracy (already in %) with one decimal; "–" when it was not measured."""
    return f"{value:.1f}"


@number
def signed(value: float) -> str:
    """Return a difference with its sign and one decimal ("+1.8", "−0.4", "0.0"); "–" when unknown."""
    rounded = round(value, 1)
    if rounded == 0:
        return "0.0"
    return f"+{rounded:.1f}" if rounded > 0 else f"−{-rounded:.1f}"


@register.filter
def sign_class(value: float | None) -> str:
    if value is None or round(value, 1) == 0:
        return "same"
    return "up" if value > 0 else "down"


def heat_rgb(value: float) -> tuple[int, int, int]:
    """Return the colour of a score in [0, 1] (clamped) on the viridis scale."""
    v = min(1.0, max(0.0, value))
    for (a, ca), (b, cb) in zip(_STOPS, _STOPS[1:]):
        if v <= b:
            t = (v - a) / (b - a)
            return tuple(round(x + (y - x) * t) for x, y in zip(ca, cb))  # type: ignore[return-value]
    return _STOPS[-1][1]


@register.filter
def heat_style(value: float | None) -> str:
    """Return the inline style of a heatmap cell: its colour, and a text colour that stays readable on it."""
    if value is None:
        return "background:#f1f3f5;color:#6b7280"
    r, g, b = heat_rgb(value)
    dark = 0.299 * r + 0.587 * g + 0.114 * b < 140
    return f"background:rgb({r},{g},{b});color:{'#fff' if dark else '#111'}"


@register.simple_tag
def sort_header(current: str, key: str, label: str, descending: bool = False) -> SafeString:
    """A column header that sorts by ``key`` (descending when ``descending``); a second click reverses it."""
    target = f"-{key}" if current == key else key
    arrow = ""
    if current.lstrip("-") == key:
        arrow = " ▼" if descending != current.startswith("-") else " ▲"
    return format_html('<a href="?sort={}" data-sort="{}">{}{}</a>', target, key, label, arrow)
