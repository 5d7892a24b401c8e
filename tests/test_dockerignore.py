"""The image that `docker compose build` makes holds no secrets or local state (`COPY . .` sends the whole context)."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def _regex(pattern: str) -> re.Pattern[str]:
    """Compile one .dockerignore pattern the way Docker's patternmatcher does (`**` spans folders)."""
    out, i = "", 0
    while i < len(pattern):
        ch = pattern[i]
        if ch == "*" and pattern[i + 1:i + 2] == "*":
            i += 2 if pattern[i + 2:i + 3] == "/" else 1
            out += ".*" if i + 1 >= len(pattern) else "(.*/)?"
        elif ch == "*":
            out += "[^/]*"
        elif ch == "?":
            out += "[^/]"
        else:
            out += re.escape(ch)
        i += 1
    return re.compile(out + "$")


def excluded(path: str) -> bool:
    """Say whether Docker leaves `path` out of the build context: the last pattern that matches it or a parent wins."""
    lines = (REPO / ".dockerignore").read_text().splitlines()
    patterns = [line.strip() for line in lines if line.strip() and not line.startswith("#")]
    parts = path.split("/")
    prefixes = ["/".join(parts[:n]) for n in range(1, len(parts) + 1)]
    result = False
    for pattern in patterns:
        negated = pattern.startswith("!")
        regex = _regex(pattern.lstrip("!").strip("/"))
        if any(regex.match(prefix) for prefix in prefixes):
            result = not negated
    return result


def test_compose_builds_from_the_repository_root_where_the_dockerignore_is() -> None:
    compose = (REPO / "docker" / "docker-compose.yml").read_text()
    assert set(re.findall(r"context:\s*([^,}\s]+)", compose)) == {".."}
    assert (REPO / ".dockerignore").is_file()


@pytest.mark.parametrize("path", [
    ".env", "docker/.env", "docker/.env.production", "docker/prod.env", ".git/config", ".data/pg/postgresql.conf",
    ".venv/bin/python", "test-artifacts/playground.png", "ruff-0.17.6-py3-none-any.whl", "evaluation/__pycache__/x.pyc",
    ".hypothesis/examples/x", ".pytest_cache/v/cache", "staticfiles/app.css",
])
def test_secrets_local_state_and_leftovers_stay_out_of_the_image(path: str) -> None:
    assert excluded(path)


@pytest.mark.parametrize("path", [
    "manage.py", "requirements.txt", "docker/Dockerfile", "docker/.env.example", "evaluation/core/sandbox.py",
    "static/avengers_web/app.css", "demo/README.md", "templates/base.html",
])
def test_the_code_the_image_runs_goes_in(path: str) -> None:
    assert not excluded(path)
