"""Roles and object permissions (issue 14): viewers read, editors change what they own, admins the rest.

The first test is the key-exfiltration scenario of the issue: a user who is not an admin pointed another user's
model at her own listener and pressed "test connection" to receive the stored key.
"""
from __future__ import annotations

import http.server
import threading
from collections.abc import Iterator
from datetime import timedelta
from io import StringIO

import pytest
from django.core.management import CommandError, call_command
from django.test import Client, override_settings
from django.utils import timezone
from rest_framework.test import APIClient

from avengers_web.models import ApiToken
from avengers_web.permissions import READ_ONLY_TOKEN
from avengers_web.services import api_token_create
from evaluation.models import EvaluationRun, LanguageModel
from tests.avengers_web.test_auth_and_schema import COVERAGE
from tests.support.snapshots import build_snapshot

pytestmark = pytest.mark.django_db
ROUTED = {("/api/v1/route", "post"), ("/api/v1/answer", "post"), ("/v1/chat/completions", "post")}
WRITES = sorted(op for op in COVERAGE if op[1] != "get")
EDITOR_WRITES = {
    ("/api/v1/datasets", "post"), ("/api/v1/datasets/{id}", "patch"), ("/api/v1/evaluations", "post"),
    ("/api/v1/evaluations/{id}/cancel", "post"), ("/api/v1/evaluations/{id}/resume", "post"),
    ("/api/v1/snapshots", "post"), ("/api/v1/snapshots/{id}/add-model", "post"),
    ("/api/v1/snapshots/{id}/add-dataset", "post"), ("/api/v1/embedding-jobs", "post"),
}


def client_for(user, *, read_only: bool = False) -> APIClient:  # type: ignore[no-untyped-def]
    _, key = api_token_create(user=user, name="t", read_only=read_only)
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {key}")
    return client


@pytest.fixture
def listener() -> Iterator[list[dict[str, str]]]:
    """A loopback HTTP server that records the headers of every request it gets."""
    seen: list[dict[str, str]] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802
            seen.append(dict(self.headers))
            body = b'{"object": "list", "data": []}'
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    seen.append({"url": f"http://127.0.0.1:{server.server_address[1]}/v1"})
    yield seen
    server.shutdown()
    server.server_close()


def test_a_user_who_is_not_an_admin_cannot_take_over_a_model_endpoint(user, make_user, listener) -> None:
    model = LanguageModel.objects.create(name="victim", base_url="https://models.example/v1", served_model_id="m",
                                         api_key="sk-stored-secret-key", created_by=user)
    url = listener[0]["url"]
    for role in ("viewer", "editor"):
        person = make_user(f"mallory-{role}", role)
        mallory = client_for(person)
        patched = mallory.patch(f"/api/v1/models/{model.pk}", {"base_url": url}, format="json")
        assert patched.status_code == 403 and "Only admins may edit models" in patched.json()["error"]["message"]
        assert mallory.post(f"/api/v1/models/{model.pk}/test-connection").status_code == 403
        assert mallory.delete(f"/api/v1/models/{model.pk}").status_code == 403
        assert mallory.post("/api/v1/models", {"name": "x", "base_url": url, "served_model_id": "m"},
                            format="json").status_code == 403
        page = Client()
        page.force_login(person)
        assert page.post(f"/models/{model.pk}/edit/", {"base_url": url}).status_code == 403
        assert page.post(f"/models/{model.pk}/test-connection/").status_code == 403
        assert page.post(f"/models/{model.pk}/toggle-active/").status_code == 403
    model.refresh_from_db()
    assert (model.base_url, model.api_key, model.is_active) == ("https://models.example/v1", "sk-stored-secret-key", True)
    assert len(listener) == 1, "the listener must never be called"


@pytest.mark.parametrize("operation", WRITES)
def test_a_viewer_reads_but_every_write_except_queries_is_refused(make_user, operation) -> None:
    viewer = client_for(make_user("vera", "viewer"))
    path, method = operation
    response = getattr(viewer, method)(path.replace("{id}", "1"), {}, format="json")
    if operation in ROUTED:
        assert response.status_code != 403  # queries are every role's (a 400/503 here: no body, no snapshot)
    else:
        assert response.status_code == 403, response.content
        needed = "editors" if operation in EDITOR_WRITES else "admins"
        assert f"Only {needed} may" in response.json()["error"]["message"]
        assert "your role is viewer" in response.json()["error"]["message"]
    for path, method in COVERAGE:
        if method == "get" and "{id}" not in path:
            assert viewer.get(path).status_code == 200


@pytest.mark.parametrize("operation", WRITES)
def test_a_read_only_token_only_reads(user, operation) -> None:
    reader = client_for(user, read_only=True)  # an admin's token, read-only: still no writes
    path, method = operation
    response = getattr(reader, method)(path.replace("{id}", "1"), {}, format="json")
    assert response.status_code == 403 and response.json()["error"]["message"] == READ_ONLY_TOKEN
    assert reader.get("/api/v1/datasets").status_code == 200 and reader.get("/v1/models").status_code == 200


def test_an_editor_changes_what_she_owns_and_an_admin_what_anyone_owns(user, make_user, sample_records) -> None:
    from evaluation.models import Dataset

    eddie, edna = make_user("eddie", "editor"), make_user("edna", "editor")
    with sample_records.open("rb") as f:
        uploaded = client_for(eddie).post("/api/v1/datasets", {"file": f}, format="multipart")
    assert uploaded.status_code == 201
    dataset = Dataset.objects.filter(created_by=eddie).first()
    assert dataset is not None
    run = EvaluationRun.objects.create(dataset=dataset, created_by=eddie, status=EvaluationRun.Status.RUNNING)
    other = client_for(edna)
    refused = other.patch(f"/api/v1/datasets/{dataset.pk}", {"description": "mine now"}, format="json")
    assert refused.status_code == 403 and "belongs to another user" in refused.json()["error"]["message"]
    assert other.post(f"/api/v1/evaluations/{run.pk}/cancel").status_code == 403
    assert client_for(eddie).patch(f"/api/v1/datasets/{dataset.pk}", {"description": "ok"},
                                   format="json").status_code == 200
    assert client_for(eddie).post(f"/api/v1/evaluations/{run.pk}/cancel").status_code == 200
    assert client_for(user).patch(f"/api/v1/datasets/{dataset.pk}", {"description": "admin"},
                                  format="json").status_code == 200
    dataset.refresh_from_db()
    assert dataset.description == "admin"


def test_an_expired_token_no_longer_works(user) -> None:
    client = client_for(user)
    assert client.get("/api/v1/datasets").status_code == 200
    ApiToken.objects.update(expires_at=timezone.now() - timedelta(seconds=1))
    assert client.get("/api/v1/datasets").status_code == 401


def test_create_api_token_makes_read_only_and_expiring_tokens(user) -> None:
    out = StringIO()
    call_command("create_api_token", "ada", "--read-only", "--expires-in-days", "7", stdout=out)
    token = ApiToken.objects.get(prefix=out.getvalue().strip()[:8])
    assert token.read_only and timedelta(days=6.9) < token.expires_at - timezone.now() <= timedelta(days=7)
    with pytest.raises(CommandError, match="1 to 3650 days"):
        call_command("create_api_token", "ada", "--expires-in-days", "0")


def test_set_role_moves_a_user_between_roles(make_user) -> None:
    from avengers_web.roles import role_of

    person = make_user("pat", "viewer")
    call_command("set_role", "pat", "editor", stdout=StringIO())
    person.refresh_from_db()
    assert role_of(person) == "editor" and not person.is_staff
    call_command("set_role", "pat", "admin", stdout=StringIO())
    person.refresh_from_db()
    assert role_of(person) == "admin" and person.is_staff
    with pytest.raises(CommandError):
        call_command("set_role", "pat", "overlord")


def test_reading_pages_needs_a_log_in_by_default() -> None:
    for path in ("/", "/datasets/", "/models/", "/evaluations/", "/snapshots/", "/traffic/", "/playground/"):
        response = Client().get(path)
        assert response.status_code == 302 and response["Location"].startswith("/login/?next="), path
    assert Client().get("/login/").status_code == 200


def test_public_read_opens_the_read_only_pages_but_not_the_writes() -> None:
    from django.conf import settings

    middleware = [m for m in settings.MIDDLEWARE if m != "django.contrib.auth.middleware.LoginRequiredMiddleware"]
    with override_settings(MIDDLEWARE=middleware):
        assert Client().get("/datasets/").status_code == 200
        assert Client().get("/datasets/upload/").status_code == 302
        assert Client().post("/playground/", {"query": "hi"}).status_code == 302


def test_a_viewer_sees_no_write_button_and_an_admin_does(user, make_user) -> None:  # type: ignore[no-untyped-def]
    snapshot = build_snapshot(version=1, means={"alpha": [0.9, 0.2], "beta": [0.3, 0.8]},
                              assignments=[("gsm8k", 0), ("mmlu", 1)], team_size=2)
    model = LanguageModel.objects.get(name="alpha")
    viewer, admin = Client(), Client()
    viewer.force_login(make_user("vic", "viewer"))
    admin.force_login(user)
    pages = {"/datasets/": "Upload a dataset", "/models/": "Register a model", "/evaluations/": "New evaluation",
             "/snapshots/": "New snapshot", f"/models/{model.pk}/": "Test connection",
             f"/snapshots/{snapshot.pk}/": 'data-testid="derive"'}
    for path, button in pages.items():
        assert button not in viewer.get(path).content.decode(), path
        assert button in admin.get(path).content.decode(), path
    assert viewer.get("/datasets/upload/").status_code == 403
    assert "your role is viewer" in viewer.get("/models/new/").content.decode()


def test_the_playground_shares_the_api_rate_limit(user, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from django.core.cache import cache

    from avengers_web import throttling

    monkeypatch.setattr(throttling, "clock", lambda: 60.0 * 29_000_000 + 20.0)
    cache.clear()
    page = Client()
    page.force_login(user)
    with override_settings(RATE_LIMIT_PER_MINUTE=2):
        codes = [page.post("/playground/", {"query": f"q{i}", "strategy": "direct"}).status_code for i in range(3)]
        assert codes[:2] != [429, 429] and codes[2] == 429
        api = APIClient()
        api.force_authenticate(user)
        assert api.post("/api/v1/route", {"query": "q"}, format="json").status_code == 429
    cache.clear()


def test_failed_log_ins_are_throttled(make_user) -> None:
    make_user("lou", "viewer")
    client = Client()
    codes = [client.post("/login/", {"username": "lou", "password": "wrong"}).status_code for _ in range(5)]
    assert codes == [200, 200, 200, 200, 429]  # the fifth failure (AVENGERS_LOGIN_FAILURE_LIMIT) locks
    locked = client.post("/login/", {"username": "lou", "password": "lou-password-1"})
    assert locked.status_code == 429 and "Too many failed log-ins" in locked.content.decode()
    other = Client().post("/login/", {"username": "lou", "password": "lou-password-1"}, REMOTE_ADDR="10.0.0.9")
    assert other.status_code == 302  # the lock holds one name from one address, not the account everywhere


def test_every_page_sends_a_content_security_policy_without_inline_script(user) -> None:
    client = Client()
    client.force_login(user)
    policy = client.get("/")["Content-Security-Policy"]
    assert "script-src 'self'" in policy and "unsafe-inline" not in policy.split("script-src")[1].split(";")[0]
    assert "frame-ancestors 'none'" in policy
