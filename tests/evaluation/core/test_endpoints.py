from __future__ import annotations

import pytest

from evaluation.core.endpoints import normalise_base_url


@pytest.mark.parametrize(("url", "expected"), [
    ("http://gpu1:8000/v1/", "http://gpu1:8000/v1"),
    ("https://api.example.com/v1", "https://api.example.com/v1"),
    ("http://127.0.0.1:8081/v1", "http://127.0.0.1:8081/v1"),
    ("http://[::1]:8000/v1", "http://[::1]:8000/v1"),
    ("", ""),
])
def test_it_accepts_internal_and_public_hosts(url: str, expected: str) -> None:
    assert normalise_base_url(url) == expected


@pytest.mark.parametrize(("url", "message"), [
    ("gpu1:8000/v1", "must start with http"),
    ("ftp://gpu1/v1", "must start with http"),
    ("http:///v1", "no valid host"),
    ("http://bad host/v1", "no valid host"),
    ("http://gpu1:99999/v1", "invalid port"),
    ("http://gpu1/v1?x=1", "query string"),
])
def test_it_says_what_is_wrong(url: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        normalise_base_url(url)
