from __future__ import annotations

import pytest

from evaluation.core.secrets import scrub, url_without_credentials

KEY = "sk-live-4f9c2e7a1b8d6035"


@pytest.mark.parametrize(("text", "expected"), [
    (f"the server said: invalid key {KEY}!", "the server said: invalid key ***!"),
    (f"Authorization: Bearer {KEY}", "Authorization: Bearer ***"),
    ("authorization: bearer some.other-token_9", "authorization: bearer ***"),
    ("Authorization: Basic YWxpY2U6aHVudGVyMg==", "Authorization: Basic ***"),
    ("could not connect to http://alice:hunter2@gpu1:8000/v1/models",
     "could not connect to http://***@gpu1:8000/v1/models"),
    ("see https://token@example.com/v1 and http://gpu1/v1", "see https://***@example.com/v1 and http://gpu1/v1"),
    ("no secret here: alice@example.com wrote", "no secret here: alice@example.com wrote"),
])
def test_it_removes_keys_tokens_and_url_credentials(text: str, expected: str) -> None:
    assert scrub(text, (KEY,)) == expected


def test_a_longer_secret_is_removed_before_a_shorter_one_it_contains() -> None:
    assert scrub("key=abcd-efgh-ijkl", ("abcd", "abcd-efgh-ijkl")) == "key=***"


def test_placeholder_keys_too_short_to_be_secret_leave_the_text_alone() -> None:
    assert scrub("no answer", ("no", "")) == "no answer"


@pytest.mark.parametrize(("url", "expected"), [
    ("http://alice:hunter2@gpu1:8000/v1", "http://gpu1:8000/v1"),
    ("https://token@[fd00::1]:8443/v1", "https://[fd00::1]:8443/v1"),
    ("http://gpu1:8000/v1", "http://gpu1:8000/v1"),
    ("", ""),
], ids=["user and password", "token on an IPv6 host", "no credentials", "empty"])  # ids, not the URLs' secrets
def test_urls_are_shown_without_credentials(url: str, expected: str) -> None:
    assert url_without_credentials(url) == expected
