"""Schemathesis fuzzes every operation of the OpenAPI schema, writes included, against a live server and the test
database: no input may cause a 5xx, and every response must match what the schema documents for it (its status,
content type and body: paginated lists as pages, errors in the API's one error shape).

The server is set up so that a well-formed request can succeed: an active snapshot whose models answer from a
real HTTP model server on loopback, a dataset, a model.
"""
from __future__ import annotations

from typing import Any

import hypothesis
import pytest
import requests
import schemathesis
from drf_spectacular.generators import SchemaGenerator
from schemathesis.checks import not_a_server_error
from schemathesis.core.failures import FailureGroup
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from avengers_web.services import api_token_create
from evaluation.models import LanguageModel
from routing.serving import tables
from tests.support.fault_server import fault_server
from tests.support.snapshots import build_snapshot

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]

EXAMPLES = 20
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
RECORDS = b'{"query": "What is 3 + 4?", "gold": "7", "task_type": "math", "scores": {"alpha": 1.0}}\n' \
          b'{"query": "What is 5 + 6?", "gold": "11", "task_type": "math", "scores": {"alpha": 0.0}}\n'
CHAT = {"model": "avengers", "messages": [{"role": "user", "content": "What is 2 + 2?"}], "samples": 1}


def test_every_operation_answers_as_documented_and_never_with_a_server_error(live_server, user, settings) -> None:  # type: ignore[no-untyped-def]
    settings.CELERY_TASK_ALWAYS_EAGER = True
    settings.RATE_LIMIT_PER_MINUTE = 0
    tables.forget()
    snapshot = build_snapshot(version=1, means={"alpha": [0.9, 0.2], "beta": [0.3, 0.8]},
                              assignments=[("gsm8k", 0), ("mmlu", 1)], team_size=2)
    snapshot.is_active = True
    snapshot.save(update_fields=["is_active"])
    _, key = api_token_create(user=user, name="fuzz")
    schema_dict = SchemaGenerator().get_schema(request=None, public=True)
    schema = schemathesis.openapi.from_dict(schema_dict)
    session = requests.Session()
    session.headers["Authorization"] = f"Bearer {key}"
    failures: list[str] = []
    answered: set[tuple[str, str, int]] = set()

    def check(case) -> Any:  # type: ignore[no-untyped-def]
        response = case.call(base_url=live_server.url, session=session, timeout=60)
        answered.add((case.method, case.path, response.status_code // 100))
        try:
            case.validate_response(response, checks=CHECKS)
        except FailureGroup as failure:  # every check that failed, with the request as curl
            failures.append(f"{case.method} {case.formatted_path} -> {response.status_code}: {str(failure)[:1500]}")
        return response

    def valid(method: str, path: str, **parts: Any) -> Any:
        """Send a request that should succeed, so that the documented success body of each write is checked too."""
        if "body" in parts:
            parts.setdefault("media_type", "application/json")
        response = check(schema[path][method].Case(**parts))
        assert response.status_code < 300, f"{method} {path}: {response.status_code} {response.text[:300]}"
        try:
            return response.json()
        except ValueError:  # the event stream of a streamed chat
            return None

    with fault_server(content="Answer: 42") as server:
        LanguageModel.objects.update(base_url=server.base_url, served_model_id=server.model)
        # Writes that random data hardly ever gets right (they name existing datasets and models), then everything
        # schemathesis generates for every operation.
        valid("POST", "/api/v1/datasets", body={"file": RECORDS, "name": "uploaded"}, media_type="multipart/form-data")
        run = valid("POST", "/api/v1/evaluations", body={"dataset": "uploaded", "models": ["alpha"]})
        valid("GET", "/api/v1/evaluations/{id}/samples", path_parameters={"id": run["id"]})
        job = valid("POST", "/api/v1/embedding-jobs", body={"datasets": ["gsm8k"]})
        valid("GET", "/api/v1/embedding-jobs/{id}", path_parameters={"id": job["id"]})
        valid("POST", "/api/v1/models", body={"name": "gamma", "base_url": server.base_url,
                                              "served_model_id": server.model})
        valid("POST", "/api/v1/snapshots/{id}/add-model", path_parameters={"id": snapshot.pk}, body={"model": "gamma"})
        valid("POST", "/v1/chat/completions", body=CHAT)
        valid("POST", "/v1/chat/completions", body={**CHAT, "stream": True})
        for result in schema.get_all_operations():
            operation = result.ok()

            @hypothesis.given(case=operation.as_strategy())
            @hypothesis.settings(max_examples=EXAMPLES, deadline=None, database=None,
                                 suppress_health_check=list(hypothesis.HealthCheck), derandomize=True)
            def fuzz(case) -> None:  # type: ignore[no-untyped-def]
                check(case)

            fuzz()
    operations = {(method.upper(), path) for path, item in schema_dict["paths"].items() for method in item}
    assert {(method, path) for method, path, _ in answered} == operations, "an operation was never called"
    assert not failures, "\n".join(failures[:20])
    # The fuzzing reached past validation into the routing service itself.
    assert {("POST", "/api/v1/route", 2), ("POST", "/api/v1/answer", 2), ("GET", "/v1/models", 2)} <= answered
