"""The dashboard's number filters: an unknown value shows as "–" everywhere; known ones are formatted."""
from __future__ import annotations

import pytest
from django import template

from avengers_web.formatting import UNKNOWN, known_only, number_filter
from evaluation.templatetags import evaluation_format
from routing.templatetags import routing_format


def test_known_only_keeps_none_from_the_formatter() -> None:
    seen: list[object] = []

    @known_only
    def shown(value: object) -> str:
        seen.append(value)
        return f"<{value}>"

    assert shown(None) == UNKNOWN == "–" and seen == []
    assert shown(0) == "<0>" and seen == [0]
    assert shown.__name__ == "shown"  # Django registers a filter under its function's name


@pytest.mark.parametrize(("formatter", "value", "shown"), [
    (evaluation_format.whole_percent, 0.455, "46%"),
    (evaluation_format.rate, 2.25, "2.3/s"),
    (evaluation_format.duration, 185, "3 min 5 s"),
    (evaluation_format.duration, 7440, "2 h 4 min"),
    (routing_format.accuracy, 71.25, "71.2"),
    (routing_format.signed, -0.44, "−0.4"),
    (routing_format.signed, 0.04, "0.0"),
])
def test_each_number_filter_formats_known_values_and_dashes_unknown_ones(formatter, value, shown) -> None:  # type: ignore[no-untyped-def]
    assert formatter(value) == shown
    assert formatter(None) == "–"


def test_number_filter_registers_the_formatter_under_its_name_with_unknown_values_dashed() -> None:
    library = template.Library()

    @number_filter(library)
    def tenths(value: float) -> str:
        return f"{value:.1f}"

    assert library.filters["tenths"] is tenths
    assert tenths(None) == UNKNOWN and tenths(0.25) == "0.2"
    page = template.Template("{% load evaluation_format %}{{ a|whole_percent }} {{ b|whole_percent }}")
    assert page.render(template.Context({"a": None, "b": 0.5})) == "– 50%"
