from __future__ import annotations

import pytest

from evaluation.core.sampling import validate_sampling_params


def test_it_cleans_known_parameters() -> None:
    assert validate_sampling_params({"temperature": 1, "max_tokens": 512.0, "stop": "###"}) == {
        "temperature": 1.0, "max_tokens": 512, "stop": ["###"]}


@pytest.mark.parametrize(("params", "message"), [
    ({"temperature": 3}, "temperature: 3 is outside"),
    ({"top_p": "high"}, "top_p: must be a number"),
    ({"max_tokens": 1.5}, "max_tokens: must be an integer"),
    ({"beam": 2}, "beam: unknown parameter"),
    ({"stop": [""]}, "stop: must be"),
])
def test_it_names_the_bad_parameter(params: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        validate_sampling_params(params)
