"""POST /api/v1/route and /api/v1/answer, /v1/chat/completions and /v1/models against scripted model servers.

Real PostgreSQL, the real MiniLM embedder and real HTTP model servers on loopback (tests.support.fault_server);
the end-to-end tests with real SmolLM2 servers are in tests/integration/test_routing_service.py.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import re
from collections.abc import Iterator

import numpy as np
import pytest
from django.test import override_settings
from pgvector.django import CosineDistance

from avengers_web.models import ApiToken
from evaluation.models import LanguageModel
from routing.models import RoutingDecision, SnapshotCluster
from routing.serving import decision_log, tables
from routing.serving import embedding as query_embedding
from tests.support.fault_server import Behaviour, FaultServer, fault_server, hang, status
from tests.support.snapshots import build_snapshot

pytestmark = pytest.mark.django_db

# Three clusters; alpha is best in cluster 0, beta in 1, gamma in 2. The team (size 2) is alpha and beta.
MEANS = {"alpha": [0.9, 0.3, 0.5], "beta": [0.6, 0.8, 0.4], "gamma": [0.2, 0.1, 0.95]}
ASSIGNMENTS = [("gsm8k", 0), ("gsm8k", 0), ("mmlu", 1), ("mmlu", 1), ("mbpp", 2)]


@pytest.fixture(autouse=True)
def fresh_service():  # type: ignore[no-untyped-def]
    tables.forget()
    yield
    tables.forget()


@pytest.fixture
def snapshot():  # type: ignore[no-untyped-def]
    snap = build_snapshot(version=1, means=MEANS, assignments=ASSIGNMENTS, team_size=2)
    snap.is_active = True
    snap.save(update_fields=["is_active"])
    return snap


def point_at(name: str, server) -> LanguageModel:  # type: ignore[no-untyped-def]
    model = LanguageModel.objects.get(name=name)
    model.base_url, model.served_model_id = server.base_url, server.model
    model.save()
    return model


@contextlib.contextmanager
def first_choice_fails(team_order: list[str], failure: Behaviour,
                       content: str) -> Iterator[tuple[FaultServer, FaultServer]]:
    """Point the team's first choice at a server that fails with `failure` and its second at one that answers
    `content`; yield both servers (broken, fine)."""
    with fault_server(default=failure) as broken, fault_server(content=content) as fine:
        point_at(team_order[0], broken)
        point_at(team_order[1], fine)
        yield broken, fine


def nearest_cluster(snapshot, query: str) -> tuple[int, list[tuple[str, float]]]:  # type: ignore[no-untyped-def]
    """The nearest cluster as pgvector orders it, and the candidates in that cluster by estimate."""
    vector = query_embedding.embed_query(snapshot.embedder, query)
    cluster = (SnapshotCluster.objects.filter(snapshot=snapshot)
               .order_by(CosineDistance("centroid", vector.tolist())).values_list("index", flat=True).first())
    return cluster, sorted(((m, MEANS[m][cluster]) for m in MEANS), key=lambda item: -item[1])


def team_in_order(snapshot, query: str) -> list[str]:  # type: ignore[no-untyped-def]
    """The team members in the order the query's cluster ranks them."""
    _, ranked = nearest_cluster(snapshot, query)
    return [m for m, _ in ranked if m in snapshot.team]


def test_route_returns_the_nearest_cluster_its_ranking_and_logs_the_decision(api, snapshot) -> None:
    query = "Natalia sold clips to 48 of her friends in April. How many clips did she sell?"
    cluster, _ = nearest_cluster(snapshot, query)
    response = api.post("/api/v1/route", {"query": query, "category": "mine"}, format="json")
    assert response.status_code == 200, response.content
    body = response.json()
    assert body["cluster"] == cluster and body["snapshot"] == {"id": snapshot.pk, "version": 1, "router": "cluster"}
    team = [m for m in sorted(snapshot.team, key=lambda m: -MEANS[m][cluster])]
    assert [c["model"] for c in body["candidates"]][:2] == team and body["candidates"][2]["model"] == "gamma"
    assert body["candidates"][0]["score"] == pytest.approx(0.9 * MEANS[team[0]][cluster] + 0.05)
    # No model has an endpoint: each is skipped, and the decision says so.
    assert body["chosen"] == "" and all("no endpoint" in c["skipped"] for c in body["candidates"])
    assert len(body["runner_ups"]) == 2 and body["similarity"] >= body["runner_ups"][0]["similarity"]
    assert set(body["timings_ms"]) == {"embed", "decide", "total"}
    row = RoutingDecision.objects.get(request_id=body["id"])
    assert (row.endpoint, row.cluster, row.snapshot_id, row.category, row.query) == ("route", cluster, snapshot.pk,
                                                                                        "mine", query)
    assert row.user.username == "ada" and row.token_prefix and row.timings_ms["embed"] >= 0


def test_answer_samples_the_best_model_votes_and_logs_everything(api, snapshot) -> None:
    query = "What is 6 times 7?"
    cluster, ranked = nearest_cluster(snapshot, query)
    team_order = [m for m, _ in ranked if m in snapshot.team]
    texts = iter(["The answer is 42", "\\boxed{42}", "Answer: 41", "Answer: 42.0"] * 5)
    with fault_server(content=lambda body: next(texts), one_choice=True) as best, fault_server() as other:
        point_at(team_order[0], best)
        point_at(team_order[1], other)
        response = api.post("/api/v1/answer", {"query": query, "samples": 4, "task_type": "math"}, format="json")
    assert response.status_code == 200, response.content
    body = response.json()
    assert body["model"] == team_order[0] and body["strategy"] == "self_consistency"
    assert body["answer"] == "42" and body["votes"] == [{"answer": "42", "votes": 3}, {"answer": "41", "votes": 1}]
    assert body["response"] == "The answer is 42" and body["agreement"] == pytest.approx(0.75)
    assert len(body["samples"]) == 4 and not body["fallback"] and best.requests == 4 and other.requests == 0
    assert body["usage"]["completion_tokens"] > 0 and body["timings_ms"]["generate"] > 0
    assert body["decision"]["cluster"] == cluster and body["decision"]["chosen"] == team_order[0]
    row = RoutingDecision.objects.get(request_id=body["id"])
    assert row.endpoint == "answer" and row.chosen_model == team_order[0] and row.final_answer == "42"
    assert row.tally == [["42", 3], ["41", 1]] and [s["text"] for s in row.samples][0] == "The answer is 42"
    assert row.task_type == "math" and row.completion_tokens == body["usage"]["completion_tokens"]
    assert set(row.timings_ms) >= {"embed", "decide", "generate", "vote", "total"}


def test_a_failing_model_hands_over_to_the_next_in_the_cluster_ranking(api, snapshot) -> None:
    query = "Which planet is known as the red planet?"
    team_order = team_in_order(snapshot, query)
    with first_choice_fails(team_order, status(500), "Answer: Mars") as (broken, _):
        body = api.post("/api/v1/answer", {"query": query, "strategy": "direct", "task_type": "qa"},
                        format="json").json()
    assert body["model"] == team_order[1] and body["fallback"] is True and body["answer"] == "Mars"
    assert body["failures"][0]["model"] == team_order[0] and body["failures"][0]["kind"] == "server_error"
    assert broken.requests == 1  # one attempt, then the next model: no backoff while the caller waits
    row = RoutingDecision.objects.get(request_id=body["id"])
    assert row.fallback and row.failures[0]["model"] == team_order[0] and row.models_used == [team_order[1]]


def test_a_server_whose_circuit_opened_is_skipped_without_being_called(api, snapshot) -> None:
    query = "Capital of France?"
    team_order = team_in_order(snapshot, query)
    with first_choice_fails(team_order, status(502), "Answer: Paris") as (broken, _):
        bodies = [api.post("/api/v1/answer", {"query": query, "strategy": "direct"}, format="json").json()
                  for _ in range(7)]
    assert all(b["model"] == team_order[1] and b["fallback"] for b in bodies)
    assert broken.requests == 5  # the breaker opens after 5 failures in a row; then the server is left alone
    skipped = bodies[-1]["decision"]["candidates"][0]
    assert skipped["model"] == team_order[0] and skipped["skipped"].startswith("circuit open")
    assert RoutingDecision.objects.filter(fallback=True).count() == 7


@override_settings(ROUTE_MODEL_TIMEOUT_S=1.0)
def test_a_hung_server_times_out_and_the_next_model_answers_within_the_deadline(api, snapshot) -> None:
    query = "Name a prime number."
    team_order = team_in_order(snapshot, query)
    with first_choice_fails(team_order, hang(30), "Answer: 7"):
        body = api.post("/api/v1/answer", {"query": query, "strategy": "direct", "timeout_s": 10},
                        format="json").json()
    assert body["model"] == team_order[1] and body["fallback"] and body["failures"][0]["kind"] == "timeout"
    assert 1000 <= body["timings_ms"]["generate"] < 10_000


def test_a_request_whose_deadline_passes_is_a_503_that_says_so(api, snapshot) -> None:
    with fault_server(default=hang(30)) as hung:
        for name in MEANS:
            point_at(name, hung)
        response = api.post("/api/v1/answer", {"query": "Hi", "strategy": "direct", "timeout_s": 1}, format="json")
    message = response.json()["error"]["message"]
    assert response.status_code == 503 and "no reply within" in message and "deadline passed" in message


def test_no_model_that_can_answer_is_a_503_that_says_why_and_is_logged(api, snapshot) -> None:
    response = api.post("/api/v1/answer", {"query": "Hello?"}, format="json")
    assert response.status_code == 503
    error = response.json()["error"]
    assert error["code"] == "no_model_available" and "no endpoint" in error["message"]
    row = RoutingDecision.objects.get()
    assert row.status_code == 503 and "no endpoint" in row.error


def test_without_an_active_snapshot_the_api_says_what_to_do(api) -> None:
    response = api.post("/api/v1/route", {"query": "Hello?"}, format="json")
    assert response.status_code == 503 and "activate" in response.json()["error"]["message"]


@pytest.mark.parametrize("body, field", [
    ({}, "query"), ({"query": ""}, "query"), ({"query": "x", "strategy": "best"}, "strategy"),
    ({"query": "x", "samples": 0}, "samples"), ({"query": "x", "samples": 999}, "samples"),
    ({"query": "x", "temperature": 3}, "temperature"), ({"query": "x", "task_type": "poetry"}, "task_type"),
    ({"query": "x", "timeout_s": 10_000}, "timeout_s"), ({"query": ["x"]}, "query"),
])
def test_bad_input_is_a_400_naming_the_field(api, snapshot, body, field) -> None:
    response = api.post("/api/v1/answer", body, format="json")
    assert response.status_code == 400, response.content
    assert field in response.json()["error"]["fields"]
    assert not RoutingDecision.objects.exists()


@override_settings(MAX_QUERY_CHARS=50)
def test_a_query_over_the_size_limit_is_a_413(api, snapshot) -> None:
    response = api.post("/api/v1/route", {"query": "x" * 51}, format="json")
    assert response.status_code == 413 and "50" in response.json()["error"]["message"]


def test_a_snapshot_can_be_named_and_unknown_ones_are_404(api, snapshot) -> None:
    assert api.post("/api/v1/route", {"query": "Hi", "snapshot": snapshot.pk}, format="json").status_code == 200
    response = api.post("/api/v1/route", {"query": "Hi", "snapshot": snapshot.pk + 99}, format="json")
    assert response.status_code == 404 and response.json()["error"]["code"] == "unknown_snapshot"


@override_settings(LOG_QUERY_TEXT=False)
def test_the_log_can_keep_only_a_hash_of_the_query(api, snapshot) -> None:
    body = api.post("/api/v1/route", {"query": "a private question"}, format="json").json()
    row = RoutingDecision.objects.get(request_id=body["id"])
    assert row.query == "" and row.query_sha256 == hashlib.sha256(b"a private question").hexdigest()
    assert row.query_chars == len("a private question")


def test_a_failure_to_write_the_log_never_fails_the_request(api, snapshot, monkeypatch) -> None:
    def refuse(*args, **kwargs):  # type: ignore[no-untyped-def]
        raise RuntimeError("the log database is gone")

    monkeypatch.setattr(decision_log, "_copy", refuse)
    before = decision_log.stats()["failed"]
    response = api.post("/api/v1/route", {"query": "Hi"}, format="json")
    assert response.status_code == 200 and decision_log.stats()["failed"] == before + 1


def test_each_token_has_a_rate_limit_answered_with_429_and_retry_after(api, api_token, snapshot, monkeypatch) -> None:
    from django.core.cache import cache

    from avengers_web import throttling

    # A fixed clock 15 s into a window: three requests must fall in one window (a real clock made this flaky
    # when the minute turned between the second and third request).
    monkeypatch.setattr(throttling, "clock", lambda: 60.0 * 29_000_000 + 15.0)
    cache.clear()
    ApiToken.objects.update(rate_limit_per_minute=2)
    codes = [api.post("/api/v1/route", {"query": f"q{i}"}, format="json") for i in range(3)]
    assert [r.status_code for r in codes] == [200, 200, 429]
    assert int(codes[2]["Retry-After"]) == 45 and codes[2].json()["error"]["code"] == "throttled"
    cache.clear()


def test_every_routing_endpoint_needs_a_token(anon_api, snapshot) -> None:
    for path in ("/api/v1/route", "/api/v1/answer", "/v1/chat/completions"):
        assert anon_api.post(path, {"query": "x"}, format="json").status_code == 401
    assert anon_api.get("/v1/models").status_code == 401


def test_v1_models_lists_avengers_and_each_built_snapshot(api, snapshot) -> None:
    body = api.get("/v1/models").json()
    ids = [m["id"] for m in body["data"]]
    assert body["object"] == "list" and ids == ["avengers", f"avengers/{snapshot.pk}"]
    assert body["data"][0]["active"] is True and body["data"][0]["version"] == 1


def test_chat_completions_answers_as_openai_does_with_the_decision_attached(api, snapshot) -> None:
    query = "What is 2+2?"
    team_order = team_in_order(snapshot, query)
    with fault_server(content="Answer: 4") as server:
        point_at(team_order[0], server)
        response = api.post("/v1/chat/completions", {
            "model": "avengers", "samples": 3, "task_type": "math",
            "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": query}],
        }, format="json")
    assert response.status_code == 200, response.content
    body = response.json()
    assert body["object"] == "chat.completion" and body["model"] == f"avengers/{snapshot.pk}"
    assert body["choices"][0]["message"] == {"role": "assistant", "content": "Answer: 4"}
    assert body["avengers"]["votes"] == [{"answer": "4", "votes": 3}]
    assert response["X-Avengers-Model"] == team_order[0] and response["X-Avengers-Snapshot"] == str(snapshot.pk)
    # The conversation goes to the model as sent, system message included.
    assert server.bodies[0]["messages"][0] == {"role": "system", "content": "Be brief."}
    assert RoutingDecision.objects.get(request_id=body["avengers"]["id"]).endpoint == "chat"


def test_chat_completions_streams_the_chosen_models_tokens_as_server_sent_events(api, snapshot) -> None:
    query = "Say hello"
    team_order = team_in_order(snapshot, query)
    with first_choice_fails(team_order, status(503), "Hello there, friend"):
        response = api.post("/v1/chat/completions", {"model": f"avengers/{snapshot.pk}", "stream": True,
                                                     "messages": [{"role": "user", "content": query}]}, format="json")
        assert response.status_code == 200 and response["Content-Type"] == "text/event-stream"
        raw = b"".join(response.streaming_content).decode()
    events = [line[len("data: "):] for line in raw.split("\n\n") if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks)
    assert text == "Hello there, friend" and chunks[-1]["choices"][0]["finish_reason"] == "stop"
    assert response["X-Avengers-Fallback"] == "true" and response["X-Avengers-Model"] == team_order[1]
    row = RoutingDecision.objects.get(request_id=response["X-Avengers-Request-Id"])
    assert row.fallback and row.samples[0]["text"] == "Hello there, friend" and row.strategy == "direct"
    assert "first_byte" in row.timings_ms


@pytest.mark.parametrize("body, code", [
    ({"model": "gpt-4", "messages": [{"role": "user", "content": "hi"}]}, 404),
    ({"model": "avengers", "messages": []}, 400),
    ({"model": "avengers", "messages": [{"role": "system", "content": "only a system message"}]}, 400),
    ({"model": "avengers", "messages": [{"role": "user", "content": "hi"}], "n": 3}, 400),
    ({"model": "avengers", "messages": [{"role": "user", "content": [{"type": "image_url"}]}]}, 400),
])
def test_chat_completions_refuses_what_it_cannot_do_in_openais_error_shape(api, snapshot, body, code) -> None:
    response = api.post("/v1/chat/completions", body, format="json")
    assert response.status_code == code, response.content
    error = response.json()["error"]
    assert error["message"] and error["type"] == "invalid_request_error"


def test_the_routing_table_matches_pgvectors_nearest_centroid_on_many_queries(snapshot) -> None:
    rng = np.random.default_rng(3)
    served = tables.served(None)
    for _ in range(20):
        vector = rng.normal(size=384).astype(np.float32)
        route = served.table.route(vector)
        nearest = (SnapshotCluster.objects.filter(snapshot=snapshot)
                   .order_by(CosineDistance("centroid", vector.tolist())).values_list("index", flat=True).first())
        assert route.cluster == nearest


def test_concurrent_queries_to_a_remote_embedder_are_embedded_in_batches(monkeypatch) -> None:
    import threading

    calls: list[int] = []
    release = threading.Event()

    class Remote:
        name, dimensions = "openai:fake", 4

        def embed(self, texts, progress=None):  # type: ignore[no-untyped-def]
            calls.append(len(texts))
            release.wait(5)
            return np.tile(np.array([1, 0, 0, 0], dtype=np.float32), (len(texts), 1))

    monkeypatch.setattr(query_embedding, "get_embedder", lambda name: Remote())
    embedding = query_embedding._Embedding()
    threads = [threading.Thread(target=embedding.embed, args=("openai:fake", f"query {i}")) for i in range(8)]
    for t in threads:
        t.start()
    for _ in range(100):
        if calls:
            break
        threading.Event().wait(0.02)
    threading.Event().wait(0.2)  # the others queue behind the first call
    release.set()
    for t in threads:
        t.join(10)
    assert sum(calls) == 8 and len(calls) < 8 and max(calls) > 1


@pytest.mark.parametrize("body, field", [
    ({"query": "x", "samples": 21}, "samples"), ({"query": "x", "max_tokens": 8193}, "max_tokens"),
])
def test_the_service_checks_the_servers_limits_for_the_api_and_the_playground_alike(  # type: ignore[no-untyped-def]
        api, client, snapshot, settings, body, field) -> None:
    settings.MAX_SAMPLES, settings.MAX_ANSWER_TOKENS = 20, 8192
    response = api.post("/api/v1/answer", body, format="json")
    assert response.status_code == 400 and list(response.json()["error"]["fields"]) == [field]
    page = client.post("/playground/", {"strategy": "direct", "samples": 1, "temperature": 0.7, **body})
    assert page.status_code == 200
    assert re.search(rf'name="{field}".*?<div class="error" role="alert">at most \d+', page.content.decode(), re.S)
    assert not RoutingDecision.objects.exists()


def test_serving_and_evaluation_share_an_endpoints_circuit_breaker_but_not_its_client(settings) -> None:  # type: ignore[no-untyped-def]
    from evaluation.runs.lanes import client_for_model
    from routing.serving.service import serving_client

    model = LanguageModel(name="m", base_url="http://127.0.0.1:9/v1", max_concurrency=3)
    evaluating, routing_ = client_for_model(model), serving_client(model)
    assert evaluating is not routing_ and evaluating.breaker is routing_.breaker
    assert routing_.retry.max_attempts == 1 and routing_.timeout_s == settings.ROUTE_MODEL_TIMEOUT_S
    assert evaluating.retry.max_attempts == settings.GENERATION_MAX_ATTEMPTS
    assert evaluating.timeout_s == settings.GENERATION_TIMEOUT_S
    assert routing_.breaker.reset_after_s == settings.CIRCUIT_RESET_S
    assert serving_client(model) is routing_ and client_for_model(model) is evaluating
