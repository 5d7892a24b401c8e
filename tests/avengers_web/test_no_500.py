"""No input gives a 500: each cause that issue 14 found is refused with a 4xx that says why.

The causes: a NUL byte in search and filter parameters (PostgreSQL refuses it), ids spelt in non-ASCII digits
("²".isdigit() is true), non-numeric ids in the snapshot derive form, JSON nested 5,000 deep (RecursionError),
runserver's static handler; and the API answered oversized bodies and server errors as HTML pages.
"""
from __future__ import annotations

import io
import json
import logging
from typing import Any
from wsgiref.util import setup_testing_defaults

import pytest
from django.core.management import get_commands, load_command_class
from django.test import Client

from routing.models import RouterSnapshot
from tests.support.snapshots import build_snapshot

pytestmark = pytest.mark.django_db

DEEP = "[" * 5000 + "]" * 5000


@pytest.fixture
def snapshot() -> RouterSnapshot:
    built = build_snapshot(version=1, means={"alpha": [0.9, 0.2], "beta": [0.3, 0.8]},
                           assignments=[("gsm8k", 0), ("mmlu", 1)], team_size=2)
    RouterSnapshot.objects.filter(pk=built.pk).update(is_active=True)
    return built


@pytest.fixture
def browser(user) -> Client:  # type: ignore[no-untyped-def]
    """A logged-in dashboard session that sees a server error as a response, as a person would."""
    client = Client(raise_request_exception=False)
    client.force_login(user)
    return client


@pytest.fixture
def api_client(api_token: str) -> Client:
    return Client(raise_request_exception=False, HTTP_AUTHORIZATION=f"Bearer {api_token}")


def api_error(response: Any, status: int) -> dict[str, str]:
    """Assert the API's JSON error shape and status; return the error."""
    assert response.status_code == status, response.content[:300]
    assert response["Content-Type"].startswith("application/json")
    error = response.json()["error"]
    assert {"code", "message", "type"} <= set(error)
    assert error["type"] == ("server_error" if status >= 500 else "invalid_request_error")
    return error


# Each of these was a 500 (psycopg.DataError: PostgreSQL text fields cannot contain NUL bytes).
@pytest.mark.parametrize("path", ["/datasets/{dataset}/?q=%00", "/datasets/{dataset}/?task_type=%00",
                                  "/datasets/{dataset}/?q=ok&split=test&q2=%00"])
def test_a_nul_byte_in_a_pages_search_or_filter_is_refused_with_a_400_page(browser: Client, snapshot, path) -> None:  # type: ignore[no-untyped-def]
    response = browser.get(path.format(dataset=snapshot.datasets.get(name="gsm8k").pk))
    assert response.status_code == 400
    assert b"holds a NUL character" in response.content
    assert b'data-testid="error-page"' in response.content


@pytest.mark.parametrize("path", ["/api/v1/datasets/{dataset}/queries?search=%00",
                                  "/api/v1/snapshots/{snapshot}/profiles?model=%00"])
def test_a_nul_byte_in_an_api_filter_is_refused_with_a_json_400(api_client: Client, snapshot, path) -> None:  # type: ignore[no-untyped-def]
    response = api_client.get(path.format(dataset=snapshot.datasets.get(name="gsm8k").pk, snapshot=snapshot.pk))
    error = api_error(response, 400)
    assert "NUL" in error["message"]


def test_a_nul_in_a_json_body_is_refused_before_it_reaches_the_database(api_client: Client) -> None:
    response = api_client.post("/api/v1/evaluations", json.dumps({"dataset": "a\u0000b", "models": ["x"]}),
                               content_type="application/json")
    assert "NUL" in api_error(response, 400)["message"]
    # An escaped backslash before "u0000" is text, not NUL: that request gets past the parser.
    text = api_client.post("/api/v1/evaluations", json.dumps({"dataset": "a\\u0000b", "models": ["x"]}),
                           content_type="application/json")
    assert "no dataset named" in api_error(text, 400)["message"]


# "²".isdigit() is true and int("²") raises ValueError: each of these was a 500.
@pytest.mark.parametrize("path", ["/snapshots/{snapshot}/?compare=%C2%B2", "/models/{model}/?snapshot=%C2%B2",
                                  "/admin/routing/routingdecision/?cluster=%C2%B2",
                                  "/admin/routing/routingdecision/?snapshot__id__exact=%C2%B2"])
def test_ids_in_non_ascii_digits_on_pages_are_ignored(browser: Client, user, snapshot, path) -> None:  # type: ignore[no-untyped-def]
    user.is_staff = user.is_superuser = True
    user.save(update_fields=["is_staff", "is_superuser"])
    response = browser.get(path.format(snapshot=snapshot.pk, model=snapshot.pool.get(name="alpha").pk))
    assert response.status_code == 200


def test_a_chat_completion_for_model_avengers_superscript_two_is_a_404_in_openai_shape(api_client: Client,  # type: ignore[no-untyped-def]
                                                                                        snapshot) -> None:
    response = api_client.post("/v1/chat/completions", {"model": "avengers/²", "messages": [
        {"role": "user", "content": "What is 2+2?"}]}, content_type="application/json")
    error = api_error(response, 404)
    assert error["code"] == "model_not_found"
    assert "avengers/²" in error["message"]


def test_an_evaluation_of_dataset_and_model_superscript_two_is_a_400(api_client: Client, snapshot) -> None:  # type: ignore[no-untyped-def]
    response = api_client.post("/api/v1/evaluations", {"dataset": "²", "models": ["²"]},
                               content_type="application/json")
    assert "no dataset named or numbered '²'" in api_error(response, 400)["message"]


@pytest.mark.parametrize("field,value", [("model", "abc"), ("model", "²"), ("dataset", "1.5"), ("dataset", "999999")])
def test_ids_that_name_nothing_in_the_derive_form_are_a_form_error(browser: Client, snapshot, field, value) -> None:  # type: ignore[no-untyped-def]
    response = browser.post(f"/snapshots/{snapshot.pk}/derive/", {field: value}, follow=True)
    assert response.status_code == 200
    assert response.redirect_chain[-1][0] == f"/snapshots/{snapshot.pk}/"
    assert f"choose a {field} from the list" in response.content.decode()
    assert RouterSnapshot.objects.count() == 1


@pytest.mark.parametrize("path,body", [
    ("/api/v1/route", DEEP),
    ("/v1/chat/completions", '{"model": "avengers", "messages": ' + DEEP + "}"),
])
def test_json_nested_5000_deep_is_refused_with_a_json_400(api_client: Client, snapshot, path, body) -> None:  # type: ignore[no-untyped-def]
    response = api_client.post(path, body, content_type="application/json")
    assert "nested more than 64 levels deep" in api_error(response, 400)["message"]


def test_json_nested_5000_deep_in_a_form_field_is_a_form_error(browser: Client, snapshot) -> None:  # type: ignore[no-untyped-def]
    dataset = snapshot.datasets.get(name="gsm8k")
    response = browser.post(f"/datasets/{dataset.pk}/templates/", {"prompt_templates": DEEP})
    assert response.status_code == 200
    assert "nested more than 64 levels deep" in response.content.decode()


@pytest.mark.parametrize("line,message", [
    ('{"query": ' + DEEP + "}", "nested more than 32 levels deep"),
    ('{"query": "a\\u0000b"}', "a NUL character"),
    ('{"query": "ok", "meta": {"note": "\\u0000"}}', "a NUL character"),
])
def test_a_records_file_with_an_unstorable_line_is_refused_line_by_line(api_client: Client, line, message) -> None:  # type: ignore[no-untyped-def]
    upload = io.BytesIO(f'{{"query": "fine"}}\n{line}\n'.encode())
    upload.name = "records.jsonl"
    response = api_client.post("/api/v1/datasets", {"file": upload, "name": "nul-test"})
    error = api_error(response, 400)
    assert error["problems"][0]["line"] == 2
    assert message in error["problems"][0]["message"]


def test_an_oversized_body_is_answered_413_in_json_on_the_api_and_as_a_page_elsewhere(  # type: ignore[no-untyped-def]
        api_client: Client, browser: Client, settings) -> None:
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 1000
    big = "x" * 2000
    as_json = api_client.post("/api/v1/route", {"query": big}, content_type="application/json")
    assert api_error(as_json, 413)["code"] == "request_too_large"
    as_form = api_client.post("/api/v1/models", {"name": big})
    assert "larger than 1000 bytes" in api_error(as_form, 413)["message"]
    page = browser.post("/models/new/", {"name": big})
    assert page.status_code == 413
    assert b"Request too large" in page.content


def test_an_unhandled_error_on_an_api_path_is_a_logged_json_500(api_client: Client, browser: Client, monkeypatch,  # type: ignore[no-untyped-def]
                                                                 caplog) -> None:
    from evaluation import selectors
    from routing.serving import tables

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("secret detail of the failure")

    monkeypatch.setattr(tables, "snapshot_choices", broken)
    monkeypatch.setattr(selectors, "dataset_list", broken)
    with caplog.at_level(logging.ERROR, logger="django.request"):
        for path in ("/v1/models", "/api/v1/datasets"):
            error = api_error(api_client.get(path), 500)
            assert error["code"] == "server_error"
            assert "secret detail" not in error["message"]
    assert [r.getMessage() for r in caplog.records if r.name == "django.request"] == [
        "Internal Server Error: /v1/models", "Internal Server Error: /api/v1/datasets"]
    assert all(r.exc_info for r in caplog.records if r.name == "django.request")
    page = browser.get("/datasets/")  # the dashboard keeps its HTML page, without the detail
    assert page.status_code == 500
    assert b"Server error" in page.content and b"secret detail" not in page.content


@pytest.mark.parametrize("method,path,status", [("get", "/api", 404), ("get", "/v1", 404),
                                                ("get", "/api/v1/nothing-here", 404), ("get", "/api/v1/route", 405)])
def test_every_api_error_is_in_the_json_shape(api_client: Client, method, path, status) -> None:  # type: ignore[no-untyped-def]
    api_error(getattr(api_client, method)(path), status)


def test_the_dashboard_answers_a_missing_page_with_its_own_404_page(browser: Client) -> None:
    response = browser.get("/datasets/999999/")
    assert response.status_code == 404
    assert b"No such dataset" in response.content
    assert b'data-testid="error-page"' in response.content


@pytest.mark.parametrize("path", ["/static/..%2fsettings.py", "/static/a%2f..%2f..%2f..%2fetc/passwd",
                                  "/static/%00"])
def test_runserver_answers_a_bad_static_path_with_a_4xx(settings, path) -> None:  # type: ignore[no-untyped-def]
    settings.DEBUG = True  # runserver serves static files only then
    command = load_command_class(get_commands()["runserver"], "runserver")
    options = vars(command.create_parser("manage.py", "runserver").parse_args([]))
    handler = command.get_handler(**options)
    environ: dict[str, Any] = {"PATH_INFO": path.replace("%2f", "/").replace("%00", "\x00"), "REQUEST_METHOD": "GET"}
    setup_testing_defaults(environ)
    statuses: list[str] = []
    b"".join(handler(environ, lambda status, headers, exc_info=None: statuses.append(status)))
    assert statuses and statuses[0][:1] == "4", statuses
    environ["PATH_INFO"] = "/static/favicon.svg"
    b"".join(handler(environ, lambda status, headers, exc_info=None: statuses.append(status)))
    assert statuses[-1] == "200 OK"


def test_an_api_key_that_cannot_travel_in_a_header_is_refused_when_it_is_set(api_client: Client, snapshot) -> None:  # type: ignore[no-untyped-def]
    # Found by schemathesis: a key with "é" was stored, then "test connection" failed to encode its header (500).
    model = snapshot.pool.get(name="alpha")
    response = api_client.patch(f"/api/v1/models/{model.pk}", {"api_key": "clé-secrète"},
                                content_type="application/json")
    assert "printable ASCII" in api_error(response, 400)["message"]
    model.refresh_from_db()
    assert model.api_key == ""
