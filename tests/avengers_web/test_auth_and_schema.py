"""Token authentication, JSON errors, and the OpenAPI schema with a test for every documented endpoint."""
from __future__ import annotations

import ast
import inspect
from io import StringIO
from pathlib import Path

import pytest
from django.core.management import CommandError, call_command
from drf_spectacular.generators import SchemaGenerator

from avengers_web.models import ApiToken
from avengers_web.services import api_token_revoke

pytestmark = pytest.mark.django_db
TESTS = Path(__file__).resolve().parent.parent

# Each documented operation, and the test that exercises it. Adding an endpoint without a test fails below.
COVERAGE = {
    ("/api/v1/datasets", "get"): "test_datasets_are_listed_with_counts_and_paginated",
    ("/api/v1/datasets", "post"): "test_uploading_records_creates_datasets_models_and_results",
    ("/api/v1/datasets/{id}", "get"): "test_datasets_are_listed_with_counts_and_paginated",
    ("/api/v1/datasets/{id}/queries", "get"): "test_a_datasets_queries_are_browsable_with_filters_and_scores",
    ("/api/v1/imports/{id}", "get"): "test_an_import_job_reports_its_progress",
    ("/api/v1/models", "get"): "test_models_are_registered_listed_edited_and_deactivated",
    ("/api/v1/models", "post"): "test_models_are_registered_listed_edited_and_deactivated",
    ("/api/v1/models/{id}", "get"): "test_models_are_registered_listed_edited_and_deactivated",
    ("/api/v1/models/{id}", "patch"): "test_models_are_registered_listed_edited_and_deactivated",
    ("/api/v1/models/{id}", "delete"): "test_models_are_registered_listed_edited_and_deactivated",
    ("/api/v1/models/{id}/test-connection", "post"): "test_test_connection_lists_what_a_real_llm_server_serves",
    ("/api/v1/datasets/{id}", "patch"): "test_prompt_templates_are_set_on_datasets_and_models_and_validated",
    ("/api/v1/evaluations", "get"): "test_an_evaluation_is_started_followed_and_its_samples_browsed",
    ("/api/v1/evaluations", "post"): "test_a_real_llm_evaluation_runs_in_a_celery_worker_and_stores_every_sample",
    ("/api/v1/evaluations/{id}", "get"): "test_an_evaluation_is_started_followed_and_its_samples_browsed",
    ("/api/v1/evaluations/{id}/cancel", "post"): "test_an_evaluation_is_cancelled_and_resumed_through_the_api",
    ("/api/v1/evaluations/{id}/resume", "post"): "test_an_evaluation_is_cancelled_and_resumed_through_the_api",
    ("/api/v1/evaluations/{id}/samples", "get"): "test_an_evaluation_is_started_followed_and_its_samples_browsed",
    ("/api/v1/snapshots", "get"): "test_snapshots_are_built_read_activated_and_derived_through_the_api",
    ("/api/v1/snapshots", "post"): "test_snapshots_are_built_read_activated_and_derived_through_the_api",
    ("/api/v1/snapshots/{id}", "get"): "test_snapshots_are_built_read_activated_and_derived_through_the_api",
    ("/api/v1/snapshots/{id}/activate", "post"): "test_snapshots_are_built_read_activated_and_derived_through_the_api",
    ("/api/v1/snapshots/{id}/add-model", "post"): "test_snapshots_are_built_read_activated_and_derived_through_the_api",
    ("/api/v1/snapshots/{id}/add-dataset", "post"):
        "test_snapshots_are_built_read_activated_and_derived_through_the_api",
    ("/api/v1/snapshots/{id}/clusters", "get"): "test_snapshots_are_built_read_activated_and_derived_through_the_api",
    ("/api/v1/snapshots/{id}/profiles", "get"): "test_snapshots_are_built_read_activated_and_derived_through_the_api",
    ("/api/v1/snapshots/{id}/heldout", "get"): "test_snapshots_are_built_read_activated_and_derived_through_the_api",
    ("/api/v1/embedding-jobs", "post"): "test_an_embedding_job_embeds_only_what_is_missing_and_reports_progress",
    ("/api/v1/embedding-jobs/{id}", "get"): "test_an_embedding_job_embeds_only_what_is_missing_and_reports_progress",
    ("/api/v1/route", "post"): "test_route_returns_the_nearest_cluster_its_ranking_and_logs_the_decision",
    ("/api/v1/answer", "post"): "test_answer_samples_the_best_model_votes_and_logs_everything",
    ("/v1/chat/completions", "post"): "test_chat_completions_answers_as_openai_does_with_the_decision_attached",
    ("/v1/models", "get"): "test_v1_models_lists_avengers_and_each_built_snapshot",
}


def schema_operations() -> set[tuple[str, str]]:
    schema = SchemaGenerator().get_schema(request=None, public=True)
    return {(path, method) for path, item in schema["paths"].items() for method in item}


def test_the_schema_validates_against_the_openapi_specification() -> None:
    out = StringIO()
    call_command("spectacular", "--validate", "--fail-on-warn", stdout=out)
    assert out.getvalue().startswith("openapi: 3")


def test_the_schema_is_served(api) -> None:  # type: ignore[no-untyped-def]
    response = api.get("/api/schema/", HTTP_ACCEPT="application/vnd.oai.openapi+json")
    assert response.status_code == 200
    assert "/api/v1/datasets" in response.json()["paths"]


def test_a_views_wrapped_docstring_is_its_operations_description_as_prose() -> None:
    from routing.api import SnapshotAddModelApi

    schema = SchemaGenerator().get_schema(request=None, public=True)
    operation = schema["paths"]["/api/v1/snapshots/{id}/add-model"]["post"]
    assert "\n" in SnapshotAddModelApi.__doc__  # wrapped in the code
    assert operation["description"] == " ".join(inspect.cleandoc(SnapshotAddModelApi.__doc__).split("\n"))
    assert operation["description"].startswith("Derive a snapshot with the same clusters and this model's profile")
    assert operation["operationId"] == "snapshots_add_model"
    assert operation["requestBody"]["content"]["application/json"]["schema"]["$ref"].endswith("/AddModelInputRequest")


def test_every_documented_endpoint_has_a_test() -> None:
    documented = schema_operations()
    assert documented == set(COVERAGE), f"undocumented or untested: {documented ^ set(COVERAGE)}"
    defined = {
        node.name
        for path in TESTS.rglob("test_*.py")
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.FunctionDef)
    }
    missing = {name for name in COVERAGE.values() if name not in defined}
    assert not missing


@pytest.mark.parametrize("operation", sorted(COVERAGE))
def test_every_endpoint_answers_401_without_a_valid_token(anon_api, operation) -> None:  # type: ignore[no-untyped-def]
    path, method = operation
    url = path.replace("{id}", "1")
    response = getattr(anon_api, method)(url)
    assert response.status_code == 401
    assert response["WWW-Authenticate"].startswith("Bearer")
    assert response.json()["error"]["code"] == "not_authenticated"
    anon_api.credentials(HTTP_AUTHORIZATION="Bearer not-a-real-token-at-all")
    response = getattr(anon_api, method)(url)
    assert response.status_code == 401 and "Invalid or revoked" in response.json()["error"]["message"]


def test_a_revoked_token_is_refused_and_a_token_records_its_use(api, api_token) -> None:  # type: ignore[no-untyped-def]
    assert api.get("/api/v1/models").status_code == 200
    token = ApiToken.objects.get()
    assert token.last_used_at is not None and token.key_hash != api_token
    api_token_revoke(token=token)
    assert api.get("/api/v1/models").status_code == 401


def test_a_malformed_authorization_header_is_explained(anon_api) -> None:  # type: ignore[no-untyped-def]
    anon_api.credentials(HTTP_AUTHORIZATION="Token abc")
    response = anon_api.get("/api/v1/models")
    assert response.status_code == 401 and "Bearer <token>" in response.json()["error"]["message"]


def test_create_api_token_prints_a_working_token(user, anon_api) -> None:  # type: ignore[no-untyped-def]
    out = StringIO()
    call_command("create_api_token", user.username, stdout=out)
    key = out.getvalue().strip()
    anon_api.credentials(HTTP_AUTHORIZATION=f"Bearer {key}")
    assert anon_api.get("/api/v1/datasets").status_code == 200
    with pytest.raises(CommandError, match="no user named 'nobody'"):
        call_command("create_api_token", "nobody")


def test_an_unknown_api_path_answers_json_404(api) -> None:  # type: ignore[no-untyped-def]
    response = api.get("/api/v1/nothing-here")
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "not_found" and "/api/schema/" in response.json()["error"]["message"]
