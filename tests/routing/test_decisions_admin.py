"""The decision log in the Django admin: filters, search, the readable detail page, read-only, staff only."""
from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from django.contrib.admin.templatetags.admin_list import result_headers
from django.contrib.auth.models import Permission
from django.test import Client
from django.urls import reverse

from routing.admin import ClusterFilter
from routing.models import RouterSnapshot, RoutingDecision

pytestmark = pytest.mark.django_db

CHANGELIST = "admin:routing_routingdecision_changelist"
NOW = datetime(2026, 12, 1, 15, 30, tzinfo=UTC)
_ids = itertools.count()


def decision(**fields: Any) -> RoutingDecision:
    n = next(_ids)
    values: dict[str, Any] = {
        "request_id": f"req-{n}", "created_at": NOW, "endpoint": RoutingDecision.Endpoint.ANSWER,
        "query": f"What is {n} + {n}?", "query_sha256": f"{n:064d}", "query_chars": 12, "cluster": 0,
        "category": "gsm8k", "chosen_model": "alpha", "total_ms": 120.0,
    }
    return RoutingDecision.objects.create(**{**values, **fields})


@pytest.fixture
def rows(user) -> dict[str, RoutingDecision]:  # type: ignore[no-untyped-def]
    v1 = RouterSnapshot.objects.create(version=1, embedder="minilm", k=8, status=RouterSnapshot.Status.DONE)
    v2 = RouterSnapshot.objects.create(version=2, embedder="minilm", k=8, status=RouterSnapshot.Status.DONE)
    RouterSnapshot.objects.create(version=3, embedder="minilm", k=8)  # no decisions: not in the snapshot filter
    return {
        "plain": decision(snapshot=v1, cluster=3, user=user),
        "fallback": decision(snapshot=v1, cluster=5, chosen_model="beta", fallback=True, category="mmlu",
                             endpoint=RoutingDecision.Endpoint.CHAT),
        "error": decision(snapshot=v2, cluster=None, chosen_model="", status_code=503, error="no active snapshot",
                          created_at=NOW - timedelta(days=3), endpoint=RoutingDecision.Endpoint.PLAYGROUND),
        "v2": decision(snapshot=v2, cluster=3, chosen_model="beta", category="mmlu", final_answer="Paris",
                       query="What is the capital of France?"),
    }


def listed(client: Client, **params: str) -> set[str]:
    response = client.get(reverse(CHANGELIST), params)
    assert response.status_code == 200
    return {d.request_id for d in response.context["cl"].result_list}


def ids(rows: dict[str, RoutingDecision], *names: str) -> set[str]:
    return {rows[n].request_id for n in names}


def test_the_list_shows_every_decision_with_its_columns(admin_client: Client, rows) -> None:  # type: ignore[no-untyped-def]
    response = admin_client.get(reverse(CHANGELIST))
    assert response.status_code == 200
    assert len(response.context["cl"].result_list) == 4
    headers = [str(h["text"]).lower() for h in result_headers(response.context["cl"])
               if h["text"] and not str(h["text"]).startswith("<")]  # not the action checkbox
    assert headers == ["time", "endpoint", "user", "snapshot", "cluster", "category", "chosen model", "fallback",
                       "status", "total ms", "query"]
    text = response.content.decode()
    assert "What is the capital of France?" in text
    assert "no active snapshot" in text  # the error, as the status's title


@pytest.mark.parametrize(("params", "expected"), [
    ({"snapshot__id__exact": "v1"}, ("plain", "fallback")),
    ({"cluster": "3"}, ("plain", "v2")),
    ({"cluster": "none"}, ("error",)),
    ({"chosen_model": "beta"}, ("fallback", "v2")),
    ({"category": "mmlu"}, ("fallback", "v2")),
    ({"fallback__exact": "1"}, ("fallback",)),
    ({"fallback__exact": "0"}, ("plain", "error", "v2")),
    ({"has_error": "yes"}, ("error",)),
    ({"has_error": "no"}, ("plain", "fallback", "v2")),
    ({"endpoint__exact": "chat"}, ("fallback",)),
    ({"created_at__year": "2026", "created_at__month": "12", "created_at__day": "1"}, ("plain", "fallback", "v2")),
    ({"q": "capital of France"}, ("v2",)),
    ({"q": "Paris"}, ("v2",)),
    ({"q": "req-"}, ("plain", "fallback", "error", "v2")),
])
def test_each_filter_and_the_search_return_the_right_rows(
        admin_client: Client, rows, params: dict[str, str], expected: tuple[str, ...],
) -> None:  # type: ignore[no-untyped-def]
    if params.get("snapshot__id__exact") == "v1":
        params = {"snapshot__id__exact": str(rows["plain"].snapshot_id)}
    assert listed(admin_client, **params) == ids(rows, *expected)


def test_search_finds_a_request_by_its_id(admin_client: Client, rows) -> None:  # type: ignore[no-untyped-def]
    assert listed(admin_client, q=rows["fallback"].request_id) == ids(rows, "fallback")


def test_the_cluster_filter_lists_the_clusters_that_occur(admin_client: Client, rows) -> None:  # type: ignore[no-untyped-def]
    def choices(**params: str) -> list[str]:
        response = admin_client.get(reverse(CHANGELIST), params)
        spec = next(s for s in response.context["cl"].filter_specs if isinstance(s, ClusterFilter))
        return [value for value, _ in spec.lookup_choices]

    assert choices() == ["3", "5", "none"]
    assert choices(snapshot__id__exact=str(rows["v2"].snapshot_id)) == ["3", "none"]


def test_the_snapshot_filter_lists_only_snapshots_with_decisions(admin_client: Client, rows) -> None:  # type: ignore[no-untyped-def]
    response = admin_client.get(reverse(CHANGELIST))
    spec = next(s for s in response.context["cl"].filter_specs if getattr(s, "field_path", "") == "snapshot")
    assert sorted(label for _, label in spec.lookup_choices) == ["snapshot v1", "snapshot v2"]


def test_the_detail_page_shows_the_tally_samples_candidates_failures_and_timings(admin_client: Client) -> None:
    row = decision(
        strategy="self_consistency", similarity=0.6123, final_answer="42", agreement=0.75, chosen_model="alpha",
        runner_ups=[{"cluster": 7, "similarity": 0.55}],
        candidates=[{"model": "alpha", "score": 0.81, "rank": 1, "in_team": True},
                    {"model": "beta", "score": 0.64, "rank": 2, "in_team": True, "skipped": "circuit open"}],
        samples=[{"model": "alpha", "index": i, "text": f"Step by step <b>{i}</b>... The answer is {a}.",
                  "answer": a, "key": a, "finish_reason": "stop"} for i, a in enumerate(["42", "42", "41", "42"])],
        tally=[["42", 3], ["41", 1]],
        failures=[{"model": "beta", "kind": "circuit_open", "message": "beta's circuit is open"}],
        timings_ms={"embed": 4.2, "decide": 1.1, "generate": 880.0, "vote": 0.3, "total": 886.0},
        total_ms=886.0, prompt_tokens=40, completion_tokens=200,
    )
    response = admin_client.get(reverse("admin:routing_routingdecision_change", args=[row.pk]))
    assert response.status_code == 200
    text = response.content.decode()
    assert "View routing decision" in text
    assert 'name="_save"' not in text  # read-only: no save button
    # The tally, as a table with shares.
    assert "<td><code>42</code></td><td>3</td><td>75%</td>" in text
    assert "<td><code>41</code></td><td>1</td><td>25%</td>" in text
    # Every sample, its response escaped in a <pre>; the winners marked.
    assert text.count('<pre class="decision-text">Step by step') == 4
    assert "Step by step &lt;b&gt;2&lt;/b&gt;... The answer is 41." in text
    assert text.count('<tr class="chosen"><td>alpha</td>') == 3
    # Candidates with their scores and the reason one was skipped; failures; timings.
    assert "<td>0.810</td>" in text and "<td>skipped: circuit open</td>" in text and "<td>answered</td>" in text
    assert "beta&#x27;s circuit is open" in text
    assert "<td>generate</td><td>880.0</td>" in text
    assert "<td>7</td><td>0.550</td>" in text
    assert reverse("cluster-detail", args=[0, 0]) not in text  # no snapshot: the cluster is not a link


def test_a_request_id_opens_its_decision_or_says_it_is_not_logged_yet(admin_client: Client, rows) -> None:  # type: ignore[no-untyped-def]
    url = reverse("admin:routing_routingdecision_by_request", args=[rows["v2"].request_id])
    response = admin_client.get(url)
    assert response.status_code == 302
    assert response["Location"] == reverse("admin:routing_routingdecision_change", args=[rows["v2"].pk])
    response = admin_client.get(reverse("admin:routing_routingdecision_by_request", args=["req-missing"]), follow=True)
    assert response.redirect_chain[-1][0] == reverse(CHANGELIST) + "?q=req-missing"
    assert "not in the log yet" in response.content.decode()


def test_it_is_read_only_and_only_a_superuser_may_delete(admin_client: Client, django_user_model, rows) -> None:  # type: ignore[no-untyped-def]
    row = rows["plain"]
    assert admin_client.get(reverse("admin:routing_routingdecision_add")).status_code == 403
    change = reverse("admin:routing_routingdecision_change", args=[row.pk])
    assert admin_client.post(change, {"final_answer": "forged"}).status_code == 403
    row.refresh_from_db()
    assert row.final_answer == ""
    assert 'href="' + reverse("admin:routing_routingdecision_add") not in admin_client.get(reverse(CHANGELIST)).content.decode()

    staff = django_user_model.objects.create_user(username="grace", password="hopper-1906", is_staff=True)
    staff.user_permissions.set(Permission.objects.filter(codename__in=["view_routingdecision", "change_routingdecision",
                                                                       "delete_routingdecision"]))
    client = Client()
    client.force_login(staff)
    assert client.get(change).status_code == 200
    delete = reverse("admin:routing_routingdecision_delete", args=[row.pk])
    assert client.post(delete, {"post": "yes"}).status_code == 403
    assert RoutingDecision.objects.filter(pk=row.pk).exists()

    assert admin_client.post(delete, {"post": "yes"}).status_code == 302
    assert not RoutingDecision.objects.filter(pk=row.pk).exists()


def test_a_user_who_is_not_staff_is_refused(make_user, rows) -> None:  # type: ignore[no-untyped-def]
    client = Client()
    client.force_login(make_user("eddie", "editor"))  # editors are not staff; admins are
    for url in (reverse(CHANGELIST), reverse("admin:routing_routingdecision_change", args=[rows["plain"].pk]),
                reverse("admin:routing_routingdecision_by_request", args=[rows["plain"].request_id])):
        response = client.get(url)
        assert response.status_code == 302 and response["Location"].startswith(reverse("admin:login")), url
    anonymous = Client().get(reverse(CHANGELIST))  # the site's log-in page, as for every page
    assert anonymous.status_code == 302 and anonymous["Location"].startswith(reverse("login"))


def test_staff_without_the_view_permission_is_refused(django_user_model, rows) -> None:  # type: ignore[no-untyped-def]
    staff = django_user_model.objects.create_user(username="grace", password="hopper-1906", is_staff=True)
    client = Client()
    client.force_login(staff)
    assert client.get(reverse(CHANGELIST)).status_code == 403
    by_request = reverse("admin:routing_routingdecision_by_request", args=[rows["plain"].request_id])
    assert client.get(by_request).status_code == 403
