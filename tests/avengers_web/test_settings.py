from __future__ import annotations

import pytest
from django.core.exceptions import ImproperlyConfigured

from avengers_web.settings import parse_database_url


def test_database_url_points_at_an_external_postgresql() -> None:
    db = parse_database_url("postgresql://avengers:s%40cret@db.internal:6543/avengers?sslmode=require")
    assert (db["HOST"], db["PORT"], db["NAME"], db["USER"], db["PASSWORD"]) == (
        "db.internal", "6543", "avengers", "avengers", "s@cret")
    assert db["OPTIONS"] == {"sslmode": "require"}


def test_database_url_can_name_a_unix_socket_folder() -> None:
    db = parse_database_url("postgresql://postgres@/avengers?host=/run/postgresql")
    assert (db["HOST"], db["NAME"], db["OPTIONS"]) == ("/run/postgresql", "avengers", {})


@pytest.mark.parametrize(("url", "message"), [
    ("sqlite:///db.sqlite3", "SQLite is not supported"),
    ("postgresql://host:5432/", "names no database"),
])
def test_a_bad_database_url_is_refused_with_a_reason(url: str, message: str) -> None:
    with pytest.raises(ImproperlyConfigured, match=message):
        parse_database_url(url)
