"""Shared fixtures: users, API clients, the real records files, and real servers started on loopback.

The embedded test database in .data/test/pg is started by the test settings and stopped by `make test`
(also on failure); each run gets its own database on it, so concurrent runs do not collide.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SHARED_DATA = REPO.parent / "shared" / "data"
ARTIFACTS = REPO / "test-artifacts"


@pytest.fixture
def pgdata() -> Iterator[Path]:
    """A folder for a throw-away embedded PostgreSQL (``<tmp>/pg``, the server stopped afterwards).

    Not in tmp_path: each pytest session that starts makes /tmp/pytest-of-USER private again, and under root the
    server runs as another user, which then could not reach its folder.
    """
    from devtools import embedded_db

    folder = Path(tempfile.mkdtemp(prefix="avengers-pg-test-"))
    path = folder / "pg"
    yield path
    embedded_db.stop(path)
    shutil.rmtree(folder, ignore_errors=True)


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
    """An admin (every write allowed): the tests of features act as one; tests of roles use the ones below."""
    from avengers_web.roles import set_role

    ada = django_user_model.objects.create_user(username="ada", password="lovelace-1815")
    set_role(ada, "admin")
    return ada


@pytest.fixture
def client(django_user_model):  # type: ignore[no-untyped-def]
    """Django's test client logged in as a viewer, since reading needs a log-in; ``anon_client`` is a visitor."""
    from django.test import Client

    from avengers_web.roles import set_role

    reader = django_user_model.objects.create_user(username="reader", password="reader-password-1")
    set_role(reader, "viewer")
    logged_in = Client()
    logged_in.force_login(reader)
    return logged_in


@pytest.fixture
def anon_client():  # type: ignore[no-untyped-def]
    from django.test import Client

    return Client()


@pytest.fixture
def public_read(settings):  # type: ignore[no-untyped-def]
    """AVENGERS_PUBLIC_READ=true: visitors may read the pages (the middleware that asks for a log-in is off)."""
    settings.MIDDLEWARE = [m for m in settings.MIDDLEWARE
                           if m != "django.contrib.auth.middleware.LoginRequiredMiddleware"]


@pytest.fixture
def make_user(django_user_model):  # type: ignore[no-untyped-def]
    """make_user(name, role) -> a user with that role (viewer, editor or admin)."""
    from avengers_web.roles import set_role

    def make(name: str, role: str):  # type: ignore[no-untyped-def]
        person = django_user_model.objects.create_user(username=name, password=f"{name}-password-1")
        set_role(person, role)
        return person

    return make


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

def start_worker(broker_url: str, db_name: str, log: Path, *, extra_env: dict[str, str] | None = None,
                 beat: bool = False, name: str = "test") -> subprocess.Popen[bytes]:
    """Start `celery worker` in its own session (so a test can kill it and all it started); with beat, also the sweeper."""
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "config.settings_test", "AVENGERS_DB_NAME": db_name,
           "CELERY_BROKER_URL": broker_url, "CELERY_TASK_ALWAYS_EAGER": "false", **(extra_env or {})}
    env.pop("DATABASE_URL", None)
    handle = log.open("wb")
    command = [sys.executable, "-m", "celery", "-A", "config", "worker", "--pool", "solo", "--loglevel", "INFO",
               "--hostname", f"{name}-{os.getpid()}@%h", "--without-gossip", "--without-mingle"]
    if beat:
        command += ["--beat", "--schedule", str(log.parent / f"beat-{name}")]
    process = subprocess.Popen(command, cwd=REPO, env=env, stdout=handle, stderr=subprocess.STDOUT,
                               start_new_session=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the Celery worker exited with {process.returncode}:\n{log.read_text()[-3000:]}")
        if b"ready." in log.read_bytes():
            return process
        time.sleep(0.2)
    process.kill()
    raise RuntimeError(f"the Celery worker was not ready after 60 s:\n{log.read_text()[-3000:]}")


@pytest.fixture(scope="session")
def celery_worker_process(redis, django_db_setup, django_db_blocker) -> Iterator[subprocess.Popen[bytes]]:  # type: ignore[no-untyped-def]
    """Start `celery worker` as a separate process and send this process's tasks to it through Redis."""
    from django.db import connection

    log = Path(tempfile.mkdtemp(prefix="celery-worker-")) / "worker.log"
    process = start_worker(redis.url, connection.settings_dict["NAME"], log)
    try:
        with sending_tasks_to(redis.url):
            yield process
    finally:
        stop_worker(process)


def stop_worker(process: subprocess.Popen[bytes]) -> None:
    """Stop a Celery worker: SIGTERM, and SIGKILL if it has not finished after 20 s."""
    from tests.support.servers import stop_process

    stop_process(process, timeout=20)


@contextlib.contextmanager
def sending_tasks_to(broker_url: str) -> Iterator[None]:
    """Send this process's tasks to ``broker_url`` (not eagerly) for the duration of the block."""
    from config.celery import app

    saved = (app.conf.broker_url, app.conf.task_always_eager, app.conf.broker_transport_options)
    app.conf.broker_url, app.conf.task_always_eager, app.conf.broker_transport_options = broker_url, False, {}
    _drop_broker_pools(app)
    try:
        yield
    finally:
        app.conf.broker_url, app.conf.task_always_eager, app.conf.broker_transport_options = saved
        _drop_broker_pools(app)


def _drop_broker_pools(app) -> None:  # type: ignore[no-untyped-def]
    """Forget connections and producers built for the previous broker, so that tasks go to the new one."""
    from kombu import pools

    if app._pool is not None:
        app._pool.force_close_all()
    app._pool = None
    app.amqp._producer_pool = None
    # kombu also keeps producer pools per connection in a global registry; a closed one would be reused
    # the next time tasks go to a broker with the same URL ("Acquire on closed pool").
    pools.reset()
