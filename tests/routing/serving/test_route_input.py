"""The route endpoint's input check gives the serializer's result, with or without the serializer."""
from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from rest_framework.exceptions import ValidationError

from routing.serving import api
from routing.serving.api import RouteInput, route_input

_TEXT = st.text(alphabet=st.characters(codec=None) | st.sampled_from(["\x00", "\ud800", " ", "\t", "a"]), max_size=120)
_VALUES = st.one_of(st.none(), st.booleans(), st.integers(min_value=-3, max_value=2**70), st.floats(), _TEXT,
                    st.text(max_size=3).map(lambda t: " " + t + " "), st.lists(st.integers(), max_size=2),
                    st.dictionaries(st.text(max_size=2), st.integers(), max_size=1))
_BODIES = st.dictionaries(st.sampled_from(["query", "snapshot", "category", "other"]), _VALUES) | st.builds(
    lambda q, s, c: {"query": q, "snapshot": s, "category": c}, _TEXT, st.integers(min_value=1), _TEXT)


def _serializer(data: Any) -> tuple[bool, Any]:
    serializer = RouteInput(data=data)
    valid = serializer.is_valid()
    return valid, dict(serializer.validated_data) if valid else serializer.errors


@settings(max_examples=600, deadline=None)
@given(data=_BODIES | st.one_of(st.lists(st.integers(), max_size=2), st.text(max_size=5), st.none()))
def test_same_result_as_the_serializer(data: Any) -> None:
    valid, expected = _serializer(data)
    if valid:
        assert route_input(data) == expected
    else:
        with pytest.raises(ValidationError) as caught:
            route_input(data)
        assert caught.value.detail == expected


@pytest.mark.parametrize("data", [
    {"query": "What is 2+2?"},
    {"query": "  spaces kept  ", "snapshot": 3, "category": "  gsm8k  "},
    {"query": "naïve café 中文", "category": "", "other": [1]},
])
def test_plain_bodies_skip_the_serializer(monkeypatch: pytest.MonkeyPatch, data: dict[str, Any]) -> None:
    valid, expected = _serializer(data)
    assert valid

    def refuse(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("the serializer was used for a plain body")

    monkeypatch.setattr(api, "RouteInput", refuse)
    assert route_input(data) == expected


@pytest.mark.parametrize("data, field", [
    ({}, "query"), ({"query": ""}, "query"), ({"query": "a\x00b"}, "query"), ({"query": "a\ud800"}, "query"),
    ({"query": "q", "snapshot": 0}, "snapshot"), ({"query": "q", "snapshot": None}, "snapshot"),
    ({"query": "q", "category": "x" * 101}, "category"), ({"query": "q", "category": None}, "category"),
])
def test_refusals_name_the_field(data: dict[str, Any], field: str) -> None:
    with pytest.raises(ValidationError) as caught:
        route_input(data)
    assert list(caught.value.detail) == [field]
