"""The routing service end to end with real parts.

A snapshot built by the real pipeline (MiniLM embeddings, k-means, profiles) from real records; two of its models
point at two real llama.cpp servers running SmolLM2-135M on loopback; the app is served by a real HTTP server
(pytest-django's live server); requests come through httpx and through the official ``openai`` client; the
decision log is written by the production background writer. Then one model server is stopped mid-test and
requests keep succeeding through the next model, with the log saying so.
"""
from __future__ import annotations

import html
import tempfile
from pathlib import Path

import httpx
import openai
import pytest

from devtools import local_llm
from avengers_web.services import api_token_create
from evaluation.models import Dataset, LanguageModel, Query
from evaluation.services import dataset_import_file
from routing import building
from routing import services as routing_services
from routing.models import RouterSnapshot, RoutingDecision
from routing.serving import decision_log, tables
from tests.support.servers import free_port

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def two_llms():  # type: ignore[no-untyped-def]
    """Two SmolLM2 server processes; the test may stop either one."""
    with tempfile.TemporaryDirectory(prefix="test-llms-") as tmp:
        ports = [free_port(), free_port()]
        with local_llm.running(port=ports[0], log_path=Path(tmp) / "a.log", alias="smol-a") as a, \
                local_llm.running(port=ports[1], log_path=Path(tmp) / "b.log", alias="smol-b") as b:
            yield [(f"http://127.0.0.1:{ports[0]}/v1", "smol-a", a), (f"http://127.0.0.1:{ports[1]}/v1", "smol-b", b)]


def test_answers_come_from_real_servers_through_both_apis_and_survive_a_server_dying(  # type: ignore[no-untyped-def]
        live_server, two_llms, sample_records, user, settings) -> None:
    settings.DECISION_LOG_MODE = "background"
    settings.CIRCUIT_RESET_S = 300
    tables.forget()
    dataset_import_file(data=sample_records.read_bytes(), filename=sample_records.name)
    snapshot = routing_services.snapshot_create(
        datasets=list(Dataset.objects.all()), models=list(LanguageModel.objects.all()), k=8, shrinkage=8.0,
        team_size=3, label="e2e", queue=False)
    building.snapshot_build(snapshot_id=snapshot.pk)
    snapshot.refresh_from_db()
    assert snapshot.status == RouterSnapshot.Status.DONE, snapshot.message
    routing_services.snapshot_activate(snapshot=snapshot)
    _, key = api_token_create(user=user, name="e2e")
    headers = {"Authorization": f"Bearer {key}"}
    http = httpx.Client(base_url=live_server.url, headers=headers, timeout=120)

    # A real held-out maths question; the decision says which team members rank first and second in its cluster.
    query = Query.objects.filter(dataset__name="gsm8k", split="test").order_by("id").first().text
    decision = http.post("/api/v1/route", json={"query": query}).json()
    ranked = [c["model"] for c in decision["candidates"] if c["in_team"]]
    first, second = ranked[0], ranked[1]
    for name, (base_url, alias, _) in zip((first, second), two_llms):
        LanguageModel.objects.filter(name=name).update(base_url=base_url, served_model_id=alias)
    tables.forget()

    # 1. POST /api/v1/answer: three samples of the best model, extracted, normalised and voted.
    response = http.post("/api/v1/answer", json={"query": query, "samples": 3, "max_tokens": 40, "task_type": "math"})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["model"] == first and not body["fallback"] and len(body["samples"]) == 3
    assert all(s["model"] == first and s["text"] for s in body["samples"])
    valid = sum(1 for s in body["samples"] if s["key"])
    assert sum(v["votes"] for v in body["votes"]) == valid
    assert body["response"] in [s["text"] for s in body["samples"]]
    assert body["usage"]["completion_tokens"] > 0 and body["decision"]["cluster"] == decision["cluster"]

    # 2. The official OpenAI client, unchanged: a normal completion with the decision attached.
    client = openai.OpenAI(base_url=live_server.url + "/v1", api_key=key, max_retries=0, timeout=120)
    raw = client.chat.completions.with_raw_response.create(
        model="avengers", messages=[{"role": "user", "content": query}], max_tokens=32,
        extra_body={"samples": 2, "task_type": "math"})
    completion = raw.parse()
    assert raw.headers["X-Avengers-Model"] == first and raw.headers["X-Avengers-Cluster"] == str(decision["cluster"])
    assert completion.model == f"avengers/{snapshot.pk}" and completion.choices[0].message.content
    extra = completion.model_extra["avengers"]
    assert extra["model"] == first and len(extra["samples"]) == 2
    assert completion.choices[0].message.content == extra["response"]

    # 3. Streaming: the chosen model's tokens arrive as chat.completion.chunk events.
    pieces = []
    with client.chat.completions.create(model=f"avengers/{snapshot.pk}", stream=True, max_tokens=24,
                                        messages=[{"role": "user", "content": "Say hello in one short sentence."}]
                                        ) as stream:
        for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                pieces.append(chunk.choices[0].delta.content)
    assert len(pieces) > 1 and "".join(pieces).strip()

    # 4. The best model's server dies: requests keep succeeding through the next model, and the log says so.
    local_llm.stop(two_llms[0][2])
    for _ in range(2):
        body = http.post("/api/v1/answer", json={"query": query, "samples": 2, "max_tokens": 24,
                                                 "task_type": "math"}).json()
        assert body["model"] == second and body["fallback"] is True, body
        assert body["failures"][0]["model"] == first and body["failures"][0]["kind"] == "connect"
    streamed = client.chat.completions.create(model="avengers", stream=True, max_tokens=16,
                                              messages=[{"role": "user", "content": query}])
    assert "".join(c.choices[0].delta.content or "" for c in streamed if c.choices)

    assert decision_log.flush(30)
    rows = list(RoutingDecision.objects.order_by("created_at"))
    assert [r.endpoint for r in rows] == ["route", "answer", "chat", "chat", "answer", "answer", "chat"]
    assert all(r.snapshot_id == snapshot.pk and r.cluster is not None and r.user_id == user.pk for r in rows)
    answered = rows[1]
    assert answered.chosen_model == first and len(answered.samples) == 3 and answered.query == query
    assert answered.tally and answered.final_answer == answered.tally[0][0] and answered.candidates[0]["model"] == first
    assert answered.completion_tokens and set(answered.timings_ms) >= {"embed", "decide", "generate", "vote", "total"}
    assert rows[2].samples and rows[3].timings_ms.get("first_byte") is not None
    for row in rows[4:]:
        assert row.fallback and row.chosen_model == second and row.failures[0]["model"] == first
    # The admin shows a logged decision with its samples.
    from django.test import Client

    user.is_staff = user.is_superuser = True
    user.save()
    admin = Client()
    admin.force_login(user)
    page = admin.get(f"/admin/routing/routingdecision/{answered.pk}/change/")
    assert page.status_code == 200 and html.escape(answered.samples[0]["text"][:20]) in page.content.decode()

