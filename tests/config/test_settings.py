from __future__ import annotations

import pytest
from django.core.exceptions import ImproperlyConfigured

from config.settings import parse_database_url


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


def _settings_env(**extra: str) -> dict[str, str]:
    """The environment of a production start: no DEBUG, no SECRET_KEY unless given, the test database server."""
    import os

    from django.conf import settings

    unset = ("DEBUG", "SECRET_KEY", "AVENGERS_PUBLIC_READ", "DJANGO_ALLOW_ASYNC_UNSAFE")  # the last: browser tests'
    env = {k: v for k, v in os.environ.items() if k not in unset}
    env.update({"DJANGO_SETTINGS_MODULE": "config.settings", "AVENGERS_DATA_DIR": str(settings.DATA_DIR)})
    env.update(extra)
    return env


def _run(code: str, env: dict[str, str]):  # type: ignore[no-untyped-def]
    import subprocess
    import sys

    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120,
                          cwd=str(TESTS_ROOT))


TESTS_ROOT = __import__("pathlib").Path(__file__).resolve().parent.parent.parent
READ_SETTINGS = ("import django, json; django.setup(); from django.conf import settings as s; "
                 "print(json.dumps([s.DEBUG, 'django.contrib.auth.middleware.LoginRequiredMiddleware' in s.MIDDLEWARE]))")


def test_debug_is_off_by_default_and_a_missing_secret_key_stops_the_start() -> None:
    failed = _run(READ_SETTINGS, _settings_env())
    assert failed.returncode != 0 and "SECRET_KEY must be set when DEBUG is off" in failed.stderr
    started = _run(READ_SETTINGS, _settings_env(SECRET_KEY="x" * 60))
    assert started.returncode == 0, started.stderr
    assert started.stdout.strip().splitlines()[-1] == "[false, true]"  # DEBUG off; reading needs a log-in
    public = _run(READ_SETTINGS, _settings_env(SECRET_KEY="x" * 60, AVENGERS_PUBLIC_READ="true"))
    assert public.stdout.strip().splitlines()[-1] == "[false, false]"


def test_check_deploy_gives_no_warning_with_production_settings() -> None:
    import secrets

    env = _settings_env(SECRET_KEY=secrets.token_urlsafe(50), ALLOWED_HOSTS="avengers.example.org",
                        AVENGERS_HTTPS="true", AVENGERS_HSTS_PRELOAD="true")
    code = ("import sys, django; from django.core.management import execute_from_command_line; "
            "execute_from_command_line(['manage.py', 'check', '--deploy', '--fail-level', 'WARNING'])")
    result = _run(code, env)
    assert result.returncode == 0, result.stderr
    assert "System check identified no issues" in result.stdout
    # Without the HTTPS settings the same check warns, so the test above can fail.
    plain = _run(code, _settings_env(SECRET_KEY=secrets.token_urlsafe(50), ALLOWED_HOSTS="avengers.example.org"))
    assert plain.returncode != 0 and "security.W004" in plain.stderr + plain.stdout


def test_importing_the_settings_starts_nothing_and_makes_no_folder(pgdata) -> None:  # type: ignore[no-untyped-def]
    data = pgdata.parent  # an empty folder; DATA_DIR/pg is pgdata
    env = _settings_env(SECRET_KEY="x" * 60, AVENGERS_DATA_DIR=str(data))
    result = _run("import config.settings as s; print(s.DATABASES['default']['ENGINE'])", env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["config.embedded_postgres"]
    assert list(data.iterdir()) == []  # no server, no database, no static, broker or metrics folder


def test_the_first_connection_starts_the_embedded_server_and_a_lost_server_is_started_again(
        pgdata) -> None:  # type: ignore[no-untyped-def]
    code = """
import json, django
django.setup()
from pathlib import Path
from django.conf import settings
from django.db import connection
from devtools import embedded_db
pg = Path(settings.EMBEDDED_DB_DIR)
data = Path(settings.DATA_DIR)
seen = [embedded_db.is_running(pg), sorted(p.name for p in (data / "broker").iterdir())]
with connection.cursor() as cursor:
    cursor.execute("SELECT extname FROM pg_extension WHERE extname = 'vector'")
    seen += [embedded_db.is_running(pg), cursor.fetchone()[0], connection.settings_dict["NAME"]]
connection.close()
embedded_db.stop(pg)
seen.append(embedded_db.is_running(pg))
with connection.cursor() as cursor:
    cursor.execute("SELECT 1")
    seen += [cursor.fetchone()[0], embedded_db.is_running(pg)]
print(json.dumps(seen))
"""
    env = _settings_env(SECRET_KEY="x" * 60, AVENGERS_DATA_DIR=str(pgdata.parent), AVENGERS_DB_NAME="first_use")
    result = _run(code, env)
    assert result.returncode == 0, result.stderr
    import json

    assert json.loads(result.stdout.strip().splitlines()[-1]) == [
        False, ["control", "processed", "queue"],  # set-up made the broker's folders, started no server
        True, "vector", "first_use",  # the first query started it and made the database with pgvector
        False, 1, True,  # a server gone since is started again by the next connection
    ]
