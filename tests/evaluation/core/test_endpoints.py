from __future__ import annotations

import pytest

from evaluation.core.endpoints import describe_reply, normalise_base_url, parse_allow_list


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


def test_credentials_in_the_url_are_refused() -> None:
    with pytest.raises(ValueError, match="user name or password") as caught:
        normalise_base_url("http://alice:hunter2@gpu1:8000/v1")
    assert "hunter2" not in str(caught.value)


@pytest.mark.parametrize(("header", "shown"), [
    ("text/html; charset=utf-8", "text/html"),
    ("Application/JSON", "application/json"),
    (None, "no content type"),
    ("text/html; x=" + "A" * 500, "text/html"),
    ("Bearer sk-live-4f9c2e7a1b8d6035 leaked", "no content type"),
    ("x" * 200 + "/html", "no content type"),
])
def test_a_reply_is_described_by_its_status_and_a_well_formed_content_type_only(header: str | None,
                                                                                shown: str) -> None:
    assert describe_reply(404, header) == f"HTTP 404 ({shown})"


def resolver(table: dict[str, list[str]]):  # type: ignore[no-untyped-def]
    asked: list[str] = []

    def resolve(host: str) -> list[str]:
        asked.append(host)
        if host not in table:
            raise OSError("name not known")
        return table[host]

    resolve.asked = asked  # type: ignore[attr-defined]
    return resolve


DNS = {"gpu1.lab": ["10.1.0.5"], "mixed.lab": ["10.1.0.6", "192.168.0.9"], "v6.lab": ["fd00::5"]}
ALLOW = "10.0.0.0/8, [fd00::/8]:8000, gpu9, *.gpu.internal, api.example.com:443, :9999"


@pytest.mark.parametrize(("url", "allowed"), [
    ("http://10.2.3.4:8000/v1", True),           # in a listed network, any port
    ("http://192.168.0.1:8000/v1", False),
    ("http://[fd00::1]:8000/v1", True),          # network with a port
    ("http://[fd00::1]:8001/v1", False),
    ("http://[::ffff:10.0.0.1]:80/v1", True),    # an IPv4-mapped address is its IPv4 address
    ("http://gpu9:1234/v1", True),               # a listed name, any port
    ("http://GPU9:1234/v1", True),
    ("http://a.gpu.internal/v1", True),          # a listed domain's subdomain
    ("http://gpu.internal/v1", False),
    ("https://api.example.com/v1", True),        # https's default port is 443
    ("http://api.example.com/v1", False),        # and http's is 80
    ("http://anything.at.all:9999/v1", True),    # a port entry: any host on that port
    ("http://gpu1.lab:8000/v1", True),           # not listed by name, but resolves into 10.0.0.0/8
    ("http://mixed.lab:8000/v1", False),         # one of its addresses is outside
    ("http://v6.lab:8000/v1", True),
    ("http://v6.lab:8001/v1", False),
    ("http://unknown.lab:8000/v1", False),       # cannot be resolved: cannot be checked
])
def test_the_allow_list_matches_hosts_networks_and_ports(url: str, allowed: bool) -> None:
    refusal = parse_allow_list(ALLOW).refusal(url, resolve=resolver(DNS))
    assert (refusal is None) is allowed, refusal
    if not allowed:
        assert "AVENGERS_MODEL_URL_ALLOW" in refusal


def test_an_empty_list_allows_everything_without_resolving_anything() -> None:
    resolve = resolver({})
    assert parse_allow_list(" , ").refusal("http://192.168.0.1/v1", resolve=resolve) is None
    assert resolve.asked == []  # type: ignore[attr-defined]


def test_a_name_listed_by_name_is_never_resolved() -> None:
    resolve = resolver({})
    assert parse_allow_list("gpu1, 10.0.0.0/8").refusal("http://gpu1:8000/v1", resolve=resolve) is None
    assert resolve.asked == []  # type: ignore[attr-defined]


def test_a_refusal_says_which_port_a_listed_name_is_allowed_on() -> None:
    refusal = parse_allow_list("gpu1:8000, 10.0.0.0/8").refusal("http://gpu1:9000/v1", resolve=resolver({}))
    assert refusal is not None and "gpu1 port 9000" in refusal and "for port 8000 only" in refusal
    alone = parse_allow_list("gpu1:8000").refusal("http://gpu1:9000/v1", resolve=resolver({}))
    assert alone is not None and "no entry allows port 9000" in alone


@pytest.mark.parametrize("entry", ["gpu1:", "gpu1:port", "gpu1:70000", "10.0.0.0/33", "[fd00::1", "[fd00::1]x",
                                   "bad host", "http://gpu1", "gpu1:²"])
def test_a_bad_entry_is_named(entry: str) -> None:
    with pytest.raises(ValueError, match="AVENGERS_MODEL_URL_ALLOW") as caught:
        parse_allow_list(f"gpu1, {entry}")
    assert repr(entry) in str(caught.value)
