"""Shared fixtures: users, API clients, the real records files, and real servers started on loopback."""
from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SHARED_DATA = REPO.parent / "shared" / "data"
ARTIFACTS = REPO / "test-artifacts"


@pytest.fixture
def llmrouter_records() -> Path:
    """The real 9-model x 14-task records (MIT, LLMRouter); a missing file fails the test."""
    path = SHARED_DATA / "llmrouter" / "records.jsonl"
    assert path.exists(), f"{path} is missing: the tests need ../shared/data beside the repository"
    return path


@pytest.fixture
def sample_records() -> Path:
    return REPO / "demo" / "sample_records.jsonl"


@pytest.fixture
def user(django_user_model):  # type: ignore[no-untyped-def]
    return django_user_model.objects.create_user(username="ada", password="lovelace-1815")


@pytest.fixture
def api_token(user) -> str:  # type: ignore[no-untyped-def]
    from avengers_web.services import api_token_create

    _, key = api_token_create(user=user, name="tests")
    return key


@pytest.fixture
def api(api_token):  # type: ignore[no-untyped-def]
    """A DRF client that sends a valid bearer token."""
    from rest_framework.test import APIClient

    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {api_token}")
    return client


@pytest.fixture
def anon_api():  # type: ignore[no-untyped-def]
    from rest_framework.test import APIClient

    return APIClient()


@pytest.fixture(scope="session")
def llm() -> Iterator[object]:
    """A real SmolLM2-135M behind llama.cpp's OpenAI-compatible server on loopback."""
    from tests.support.servers import llm_server

    with llm_server() as server:
        yield server


@pytest.fixture(scope="session")
def redis() -> Iterator[object]:
    from tests.support.servers import redis_server

    with redis_server() as server:
        yield server


@pytest.fixture(scope="session")
def artifacts() -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    return ARTIFACTS


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Stop the embedded test database if this run started it."""
    from django.conf import settings

    from avengers_web import embedded_db

    if os.environ.get("DATABASE_URL") or not settings.configured:
        return
    if embedded_db.started_here(settings.EMBEDDED_DB_DIR):
        from django.db import connections

        connections.close_all()
        embedded_db.stop(settings.EMBEDDED_DB_DIR)
