"""Schemathesis fuzzes every operation of the OpenAPI schema against a live server: no input may cause a 5xx.

The server is set up so that a well-formed request can succeed: an active snapshot whose models answer from a
real HTTP model server on loopback, a dataset, a model. Whatever schemathesis generates (valid or not) must
get a 2xx or a 4xx, never a server error.
"""
from __future__ import annotations

import hypothesis
import pytest
import requests
import schemathesis
from drf_spectacular.generators import SchemaGenerator

from avengers_web.services import api_token_create
from evaluation.models import LanguageModel
from routing import serving
from tests.support.fault_server import fault_server
from tests.support.snapshots import build_snapshot

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]

EXAMPLES = 12


def test_no_generated_request_gets_a_server_error(live_server, user, settings) -> None:  # type: ignore[no-untyped-def]
    settings.CELERY_TASK_ALWAYS_EAGER = True
    settings.RATE_LIMIT_PER_MINUTE = 0
    serving.forget()
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
    calls = 0
    answered: set[tuple[str, str, int]] = set()
    with fault_server(content="Answer: 42") as server:
        LanguageModel.objects.update(base_url=server.base_url, served_model_id=server.model)
        for result in schema.get_all_operations():
            operation = result.ok()

            @hypothesis.given(case=operation.as_strategy())
            @hypothesis.settings(max_examples=EXAMPLES, deadline=None, database=None,
                                 suppress_health_check=list(hypothesis.HealthCheck), derandomize=True)
            def fuzz(case) -> None:  # type: ignore[no-untyped-def]
                nonlocal calls
                response = case.call(base_url=live_server.url, session=session, timeout=60)
                calls += 1
                answered.add((case.method, case.path, response.status_code // 100))
                if response.status_code >= 500:
                    failures.append(f"{case.method} {case.formatted_path} -> {response.status_code}: "
                                    f"{response.text[:300]}\n  {case.as_curl_command()}")

            fuzz()
    assert calls >= EXAMPLES, "schemathesis generated almost nothing"
    assert not failures, "\n".join(failures[:10])
    # The fuzzing reached past validation into the routing service itself.
    assert {("POST", "/api/v1/route", 2), ("POST", "/api/v1/answer", 2), ("GET", "/v1/models", 2)} <= answered
