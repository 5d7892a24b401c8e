"""Model endpoints never leak their key or reflect what a server answered: real HTTP servers on loopback that
record what they receive, echo the request's headers back, serve internal-looking HTML or redirect elsewhere."""
from __future__ import annotations

import json
import logging
from typing import Any

import pytest
from django.urls import reverse
from rest_framework.test import APIClient

from avengers_web.models import Activity
from avengers_web.services import api_token_create
from evaluation.runs import lanes, services
from evaluation.core.generation import ChatRequest, GenerationError
from evaluation.models import Dataset, EvaluationRun, LanguageModel, ModelResponse, Query
from evaluation.providers import OpenAIChatClient
from routing.providers import EmbeddingProviderError, OpenAIEmbeddingClient
from tests.support.reflecting_server import echo_headers, html_page, model_list, redirect_to, reflecting_server
from tests.support.servers import free_port

pytestmark = pytest.mark.django_db

KEY = "sk-live-4f9c2e7a1b8d6035"
OTHER_KEY = "sk-live-new-77aa11bb22cc"
INTERNAL = "INTERNAL-ONLY admin console of billing-db-7"
REQUEST = ChatRequest(model="m", messages=({"role": "user", "content": "Hi"},))


@pytest.fixture
def admin_api(admin_user) -> APIClient:  # type: ignore[no-untyped-def]
    _, key = api_token_create(user=admin_user, name="secrets-tests")
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {key}")
    return client


def endpoint(base_url: str, *, api_key: str = KEY, name: str = "target") -> LanguageModel:
    """A model saved straight to the database, as an older release may have stored it."""
    return LanguageModel.objects.create(name=name, base_url=base_url, served_model_id="m", api_key=api_key)


# ------------------------------------------------------------------------------ the key follows its endpoint


def test_moving_a_model_clears_its_key_so_test_connection_cannot_send_it_away(admin_api: APIClient) -> None:
    with reflecting_server(model_list("m")) as listener:
        model = endpoint(f"http://127.0.0.1:{free_port()}/v1")
        moved = admin_api.patch(f"/api/v1/models/{model.pk}", {"base_url": listener.base_url}, format="json")
        assert moved.status_code == 200, moved.content
        assert moved.json()["has_api_key"] is False
        model.refresh_from_db()
        assert model.api_key == ""
        checked = admin_api.post(f"/api/v1/models/{model.pk}/test-connection").json()
    assert checked["ok"] is True and len(listener.requests) == 1  # the listener was asked ...
    assert listener.authorizations == []  # ... and got no key
    assert KEY not in json.dumps([r.headers for r in listener.requests])


def test_a_key_sent_with_the_new_base_url_is_kept_and_only_it_is_sent(admin_api: APIClient) -> None:
    with reflecting_server(model_list("m")) as first, reflecting_server(model_list("m")) as second:
        model = endpoint(f"http://127.0.0.1:{free_port()}/v1")
        moved = admin_api.patch(f"/api/v1/models/{model.pk}", {"base_url": first.base_url, "api_key": OTHER_KEY},
                                format="json")
        assert moved.status_code == 200 and moved.json()["has_api_key"] is True
        model.refresh_from_db()
        assert model.api_key == OTHER_KEY
        admin_api.post(f"/api/v1/models/{model.pk}/test-connection")
        # Moving it again without a key clears the new one too.
        admin_api.patch(f"/api/v1/models/{model.pk}", {"base_url": second.base_url}, format="json")
        admin_api.post(f"/api/v1/models/{model.pk}/test-connection")
    model.refresh_from_db()
    assert first.authorizations == [f"Bearer {OTHER_KEY}"] and second.authorizations == [] and model.api_key == ""


def test_the_dashboard_form_clears_the_key_when_the_base_url_changes(admin_client: Any) -> None:
    model = endpoint("http://127.0.0.1:9/v1")
    form = {"name": model.name, "served_model_id": "m", "api_key": "", "default_params": "{}",
            "prompt_templates": "{}", "max_concurrency": "8", "description": ""}
    unchanged = admin_client.post(reverse("model-edit", args=[model.pk]), {**form, "base_url": "http://127.0.0.1:9/v1"})
    model.refresh_from_db()
    assert unchanged.status_code == 302 and model.api_key == KEY  # an edit that keeps the URL keeps the key
    admin_client.post(reverse("model-edit", args=[model.pk]), {**form, "base_url": "http://127.0.0.1:10/v1",
                                                               "api_key": KEY})
    model.refresh_from_db()
    assert (model.base_url, model.api_key) == ("http://127.0.0.1:10/v1", KEY)  # typed in again: kept
    moved = admin_client.post(reverse("model-edit", args=[model.pk]), {**form, "base_url": "http://10.9.9.9:8000/v1"})
    model.refresh_from_db()
    assert moved.status_code == 302 and (model.base_url, model.api_key) == ("http://10.9.9.9:8000/v1", "")


def test_the_admin_clears_the_key_when_the_base_url_changes(admin_client: Any) -> None:
    model = endpoint("http://127.0.0.1:9/v1")
    url = reverse("admin:evaluation_languagemodel_change", args=[model.pk])
    form = {"name": model.name, "base_url": "http://10.9.9.9:8000/v1", "served_model_id": "m", "api_key": "",
            "default_params": "{}", "prompt_templates": "{}", "max_concurrency": "8", "description": "",
            "metadata": "{}", "is_active": "on", "_save": "Save"}
    response = admin_client.post(url, form)
    assert response.status_code == 302, response.content.decode()[:2000]
    model.refresh_from_db()
    assert (model.base_url, model.api_key) == ("http://10.9.9.9:8000/v1", "")


# ------------------------------------------------------------------------------ nothing comes back


def test_an_echoing_server_never_gets_the_key_onto_the_page_into_the_database_or_the_logs(
        admin_client: Any, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    with reflecting_server(echo_headers(status=500)) as echo:
        model = endpoint(echo.base_url)
        page = admin_client.post(reverse("model-test-connection", args=[model.pk]), follow=True)
    assert echo.authorizations == [f"Bearer {KEY}"]  # the server had it; nothing may carry it back
    text = page.content.decode()
    assert KEY not in text and "python-httpx" not in text  # neither the key nor anything else of the body
    assert page.status_code == 200 and "answered HTTP 500 (text/plain)" in text
    model.refresh_from_db()
    stored = json.dumps([{k: str(v) for k, v in row.items() if k != "api_key"}
                         for row in LanguageModel.objects.values()])
    activity = json.dumps([str(a) for a in Activity.objects.all()])
    assert "HTTP 500" in model.last_check_message and KEY not in stored and KEY not in activity
    assert KEY not in caplog.text


def test_a_server_answering_html_is_described_not_shown(admin_api: APIClient) -> None:
    with reflecting_server(html_page(INTERNAL, status=404)) as internal:
        model = endpoint(internal.base_url)
        body = admin_api.post(f"/api/v1/models/{model.pk}/test-connection").json()
        shown = admin_api.get(f"/api/v1/models/{model.pk}").json()
    assert body["ok"] is False and INTERNAL not in json.dumps(body) and INTERNAL not in json.dumps(shown)
    assert body["message"] == (f"{internal.base_url}/models answered HTTP 404 (text/html), which is not an "
                               "OpenAI-compatible /v1/models response")


def test_generation_errors_stored_on_samples_hold_neither_the_body_nor_the_key() -> None:
    dataset = Dataset.objects.create(name="echoed", split_seed=1)
    for i in range(2):
        Query.objects.create(dataset=dataset, external_id=f"q{i}", text=f"What is {i}?", text_hash=f"h{i}",
                             gold=str(i), task_type="math", split="train", split_source="file")
    with reflecting_server(echo_headers(status=400)) as echo:
        model = endpoint(echo.base_url)
        run = services.evaluation_run_create(dataset=dataset, models=[model], queue=False)
        lanes.evaluation_lane_run(run_id=run.pk, model_id=model.pk, client_factory=lanes.client_for_model)
    assert echo.authorizations == [f"Bearer {KEY}"] * 2
    errors = list(ModelResponse.objects.values_list("error", flat=True))
    run.refresh_from_db()
    stored = json.dumps([errors, run.message, list(EvaluationRun.objects.values_list("message", flat=True))])
    assert KEY not in stored and "python-httpx" not in stored and "authorization" not in stored.lower()
    assert len(errors) == 2 and all("rejected the request with HTTP 400 (text/plain)" in e for e in errors)


def test_chat_and_embedding_clients_describe_a_bad_reply_without_repeating_it() -> None:
    with reflecting_server(html_page(INTERNAL, status=500)) as internal:
        with pytest.raises(GenerationError) as chat:
            OpenAIChatClient(base_url=internal.base_url, api_key=KEY, sleep=lambda s: None).complete(REQUEST)
        with pytest.raises(EmbeddingProviderError) as embed:
            OpenAIEmbeddingClient(base_url=internal.base_url, model="m", api_key=KEY, backoff_s=0).embed(["a"])
    for message in (chat.value.message, str(embed.value)):
        assert "HTTP 500 (text/html)" in message and INTERNAL not in message and KEY not in message


# ------------------------------------------------------------------------------ redirects


def test_test_connection_does_not_follow_a_redirect(admin_api: APIClient) -> None:
    with reflecting_server(model_list("m")) as elsewhere:
        with reflecting_server(redirect_to(f"{elsewhere.base_url}/models")) as redirecting:
            model = endpoint(redirecting.base_url)
            body = admin_api.post(f"/api/v1/models/{model.pk}/test-connection").json()
    assert body["ok"] is False and "HTTP 302, a redirect, which is not followed" in body["message"]
    assert elsewhere.requests == [] and elsewhere.base_url not in body["message"]


def test_chat_and_embedding_clients_do_not_follow_a_redirect() -> None:
    with reflecting_server(model_list("m")) as elsewhere:
        with reflecting_server(redirect_to(f"{elsewhere.base_url}/x", status=307)) as redirecting:
            with pytest.raises(GenerationError) as chat:
                OpenAIChatClient(base_url=redirecting.base_url, api_key=KEY).complete(REQUEST)
            with pytest.raises(EmbeddingProviderError) as embed:
                OpenAIEmbeddingClient(base_url=redirecting.base_url, model="m", api_key=KEY).embed(["a"])
    assert elsewhere.requests == [] and len(redirecting.requests) == 2
    for message in (chat.value.message, str(embed.value)):
        assert "HTTP 307, a redirect, which is not followed" in message and elsewhere.base_url not in message


# ------------------------------------------------------------------------------ credentials in base_url


def test_credentials_in_a_base_url_are_refused_with_a_clear_message(admin_api: APIClient, admin_client: Any) -> None:
    url = "http://alice:hunter2-pass@127.0.0.1:9/v1"
    created = admin_api.post("/api/v1/models", {"name": "creds", "base_url": url}, format="json")
    assert created.status_code == 400 and "base_url" in created.json()["error"]["fields"]
    assert "user name or password" in created.content.decode() and "hunter2" not in created.content.decode()
    model = endpoint("http://127.0.0.1:9/v1")
    patched = admin_api.patch(f"/api/v1/models/{model.pk}", {"base_url": url}, format="json")
    form = admin_client.post(reverse("model-create"), {"name": "creds2", "base_url": url, "max_concurrency": "8",
                                                       "default_params": "{}", "prompt_templates": "{}"})
    assert patched.status_code == 400 and form.status_code == 200 and "user name or password" in form.content.decode()
    model.refresh_from_db()
    assert model.base_url == "http://127.0.0.1:9/v1" and not LanguageModel.objects.filter(name__startswith="creds")


def test_credentials_stored_by_an_older_release_are_never_shown(admin_api: APIClient, admin_client: Any) -> None:
    model = endpoint(f"http://alice:hunter2-pass@127.0.0.1:{free_port()}/v1", api_key="")
    shown = [
        admin_api.get(f"/api/v1/models/{model.pk}").content.decode(),
        admin_api.get("/api/v1/models").content.decode(),
        admin_api.post(f"/api/v1/models/{model.pk}/test-connection").content.decode(),
        admin_client.get(reverse("model-list")).content.decode(),
        admin_client.get(reverse("model-detail", args=[model.pk])).content.decode(),
        admin_client.get(reverse("admin:evaluation_languagemodel_changelist")).content.decode(),
    ]
    assert all("127.0.0.1" in text for text in shown)  # the endpoint is shown ...
    assert not [text for text in shown if "hunter2" in text]  # ... without its password
    model.refresh_from_db()
    assert "hunter2" not in model.last_check_message and "could not connect" in model.last_check_message


# ------------------------------------------------------------------------------ AVENGERS_MODEL_URL_ALLOW


def test_the_allow_list_refuses_to_register_an_endpoint_outside_it(admin_api: APIClient, settings: Any) -> None:
    settings.MODEL_URL_ALLOW = "10.0.0.0/8, gpu1:8000"
    outside = admin_api.post("/api/v1/models", {"name": "local", "base_url": "http://127.0.0.1:8000/v1"},
                             format="json")
    assert outside.status_code == 400 and "AVENGERS_MODEL_URL_ALLOW" in outside.json()["error"]["message"]
    wrong_port = admin_api.post("/api/v1/models", {"name": "gpu1", "base_url": "http://gpu1:9000/v1"}, format="json")
    assert wrong_port.status_code == 400 and "port 9000" in wrong_port.json()["error"]["message"]
    for name, url in (("gpu1", "http://gpu1:8000/v1"), ("subnet", "http://10.1.2.3:8001/v1")):
        assert admin_api.post("/api/v1/models", {"name": name, "base_url": url}, format="json").status_code == 201
    model = LanguageModel.objects.get(name="subnet")
    moved = admin_api.patch(f"/api/v1/models/{model.pk}", {"base_url": "http://192.168.1.5/v1"}, format="json")
    model.refresh_from_db()
    assert moved.status_code == 400 and model.base_url == "http://10.1.2.3:8001/v1"
    assert sorted(LanguageModel.objects.values_list("name", flat=True)) == ["gpu1", "subnet"]


def test_the_allow_list_stops_every_call_to_an_endpoint_outside_it(admin_api: APIClient, settings: Any) -> None:
    with reflecting_server(model_list("m")) as listener:
        model = endpoint(listener.base_url)  # registered before the list was set
        settings.MODEL_URL_ALLOW = f"10.0.0.0/8, 127.0.0.1:{listener.port + 1}"
        body = admin_api.post(f"/api/v1/models/{model.pk}/test-connection").json()
        with pytest.raises(GenerationError) as chat:
            OpenAIChatClient(base_url=listener.base_url, api_key=KEY).complete(REQUEST)
        with pytest.raises(EmbeddingProviderError) as embed:
            OpenAIEmbeddingClient(base_url=listener.base_url, model="m", api_key=KEY).embed(["a"])
        assert listener.requests == []
        for message in (body["message"], chat.value.message, str(embed.value)):
            assert "not called" in message and "AVENGERS_MODEL_URL_ALLOW" in message
        assert chat.value.kind == "client_error" and chat.value.attempts == 1
        for allowed in ("127.0.0.0/8", f":{listener.port}", f"127.0.0.1:{listener.port}"):
            settings.MODEL_URL_ALLOW = allowed
            assert admin_api.post(f"/api/v1/models/{model.pk}/test-connection").json()["ok"] is True
    assert len(listener.requests) == 3
