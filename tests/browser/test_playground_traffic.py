"""The playground and the traffic page in a real headless Chromium: the traffic charts drawn from decision-log rows
written by hand, the playground's clear message when no snapshot is active, and a query answered end to end by
the real SmolLM2 server through a snapshot written by hand, then found in the admin."""
from __future__ import annotations

import itertools
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from django.test import Client
from django.utils import timezone
from playwright.sync_api import Page, expect

from tests.browser.conftest import PageLog
from tests.browser.test_dashboard import log_in, shot
from tests.browser.test_routing_pages import assert_chart_drawn
from tests.support.snapshots import build_snapshot

pytestmark = [pytest.mark.browser, pytest.mark.integration]

ANSWER_TIMEOUT_MS = 180_000
# Per category, the models that answer its queries and how often (the traffic page's Figure 9).
ROUTING = {"gsm8k": {"qwen-7b": 14, "llama-8b": 6}, "mmlu": {"llama-8b": 12, "mistral-7b": 4},
           "humaneval": {"qwen-7b": 5, "mistral-7b": 7, "llama-8b": 2}}
CLUSTER_OF = {"gsm8k": (0, 1), "mmlu": (2,), "humaneval": (3,)}
_ids = itertools.count()


@pytest.fixture
def staff(user):  # type: ignore[no-untyped-def]
    user.is_staff = user.is_superuser = True
    user.save(update_fields=["is_staff", "is_superuser"])
    return user


@pytest.fixture
def fresh_service() -> Iterator[None]:
    """The service caches the active snapshot and routing tables per process: start and end with none."""
    from routing.serving import tables

    tables.forget()
    yield
    tables.forget()


def decision(**fields: Any) -> Any:
    from routing.models import RoutingDecision

    n = next(_ids)
    values: dict[str, Any] = {
        "request_id": f"dec_browser_{n}", "endpoint": RoutingDecision.Endpoint.ANSWER, "query": f"Query number {n}?",
        "query_sha256": f"{n:064d}", "query_chars": 16, "strategy": "self_consistency", "task_type": "math",
        "total_ms": 100.0,
    }
    return RoutingDecision.objects.create(**{**values, **fields})


def write_traffic(snapshot: Any) -> dict[str, Any]:
    """Write the routed requests of ROUTING spread over the last 20 hours, one fallback in five, and two errors."""
    rng = np.random.default_rng(3)
    now = timezone.now()
    rows = [(category, model) for category, models in ROUTING.items() for model, n in models.items() for _ in range(n)]
    order = rng.permutation(len(rows))
    latencies, newest = [], ""
    for position, i in enumerate(order):
        category, model = rows[i]
        latency = float(200 + 40 * position)
        latencies.append(latency)
        row = decision(created_at=now - timedelta(minutes=17 * position + 1), snapshot=snapshot, category=category,
                 cluster=int(rng.choice(CLUSTER_OF[category])), similarity=0.6, chosen_model=model,
                 fallback=position % 5 == 0, final_answer=str(position), agreement=0.8, total_ms=latency,
                 tally=[[str(position), 4], ["7", 1]],
                 samples=[{"model": model, "index": k, "text": f"Working... the answer is {position if k < 4 else 7}.",
                           "answer": str(position if k < 4 else 7), "key": str(position if k < 4 else 7),
                           "finish_reason": "stop"} for k in range(5)],
                 candidates=[{"model": model, "score": 0.8, "rank": 1, "in_team": True}],
                 timings_ms={"embed": 3.0, "decide": 0.4, "generate": latency - 5, "vote": 0.2, "total": latency})
        newest = newest or row.request_id
    for minutes in (30, 90):
        decision(created_at=now - timedelta(minutes=minutes), snapshot=snapshot, cluster=None, chosen_model="",
                 status_code=503, error="no model could answer", total_ms=4.0)
    return {"answered": len(rows), "errors": 2, "fallbacks": sum(1 for p in range(len(rows)) if p % 5 == 0),
            "p50": int(round(float(np.percentile(latencies, 50)))), "newest": newest}


def test_the_traffic_page_draws_its_charts_from_the_decision_log(
        page: Page, page_log: PageLog, live_server, staff, screenshots: Path,
) -> None:  # type: ignore[no-untyped-def]
    # Before any request: an empty state that says where requests come from.
    log_in(page, live_server)
    page.goto("/")
    page.click("header nav >> text=Traffic")
    page.wait_for_url("**/traffic/", wait_until="load")
    expect(page.get_by_test_id("traffic-empty")).to_contain_text("No routed requests yet")
    expect(page.locator("canvas")).to_have_count(0)
    shot(page, screenshots, "traffic-empty")

    snapshot = build_snapshot(
        version=1, label="four clusters", means={"qwen-7b": [0.9, 0.8, 0.3, 0.6], "llama-8b": [0.5, 0.6, 0.9, 0.4],
                                                  "mistral-7b": [0.2, 0.3, 0.5, 0.8]},
        assignments=[("gsm8k", 0), ("gsm8k", 1), ("mmlu", 2), ("humaneval", 3)] * 3, team_size=3)
    expected = write_traffic(snapshot)

    page.reload()
    summary = page.get_by_test_id("traffic-summary")
    expect(page.get_by_test_id("stat-requests")).to_have_text(str(expected["answered"] + expected["errors"]))
    expect(page.get_by_test_id("stat-fallbacks")).to_have_text(str(expected["fallbacks"]))
    expect(page.get_by_test_id("stat-errors")).to_have_text("2")
    expect(page.get_by_test_id("stat-p50")).to_have_text(f"{expected['p50']} ms")
    expect(summary).to_contain_text("95th percentile")

    # Per cluster: the four clusters and the requests that were never routed, one bar per hour.
    clusters = assert_chart_drawn(page, "cluster-chart")
    assert clusters["type"] == "bar" and clusters["datasets"] == [24] * 5
    labels = page.evaluate("Chart.getChart('cluster-chart').data.datasets.map((d) => d.label)")
    assert sorted(labels[:4]) == ["cluster 0", "cluster 1", "cluster 2", "cluster 3"] and labels[4] == "not routed"
    totals = page.evaluate("Chart.getChart('cluster-chart').data.datasets.map((d) => d.data.reduce((a, b) => a + b, 0))")
    assert sum(totals) == expected["answered"] + expected["errors"]

    # Per model: three models and "no answer".
    models = assert_chart_drawn(page, "model-chart")
    assert models["datasets"] == [24] * 4
    model_totals = page.evaluate("""Object.fromEntries(Chart.getChart('model-chart').data.datasets.map(
        (d) => [d.label, d.data.reduce((a, b) => a + b, 0)]))""")
    assert model_totals == {"llama-8b": 20, "qwen-7b": 19, "mistral-7b": 11, "no answer": 2}

    # Figure 9: one stacked bar per category, segments per model, each bar summing to 100%.
    figure = assert_chart_drawn(page, "category-chart")
    assert figure["datasets"] == [3, 3, 3]
    sums = page.evaluate("""(() => { const c = Chart.getChart('category-chart');
        return c.data.labels.map((_, i) => c.data.datasets.reduce((a, d) => a + d.data[i], 0)); })()""")
    assert sums == pytest.approx([100, 100, 100], abs=0.05)
    table = page.locator("table[data-testid=category-table]")
    expect(table.locator('tr[data-category="gsm8k"] td[data-model="qwen-7b"]')).to_have_text("70%")
    expect(table.locator('tr[data-category="mmlu"] td[data-model="mistral-7b"]')).to_have_text("25%")
    expect(table.locator('tr[data-category="humaneval"] td').nth(1)).to_have_text("14")

    latest = page.locator("table[data-testid=latest-table] tbody tr")
    expect(latest).to_have_count(20)
    expect(latest.first).to_have_attribute("data-request", expected["newest"])  # newest first
    expect(latest.first).to_contain_text("answer")
    shot(page, screenshots, "traffic")

    # A staff member opens a request in the admin from the table: the vote tally and every sample.
    log_in(page, live_server)
    page.goto("/traffic/")
    page.locator("a[data-testid=decision-admin-link]").first.click()
    page.wait_for_url("**/admin/routing/routingdecision/*/change/", wait_until="load")
    expect(page.locator("h1")).to_have_text("View routing decision")
    expect(page.locator(".field-tally_table table tbody tr")).to_have_count(2)
    expect(page.locator(".field-samples_table pre.decision-text")).to_have_count(5)
    expect(page.locator(".field-samples_table tr.chosen")).to_have_count(4)
    shot(page, screenshots, "decision-admin")

    # The admin list, filtered to the errors.
    page.goto("/admin/routing/routingdecision/?has_error=yes")
    expect(page.locator("#result_list tbody tr")).to_have_count(2)
    shot(page, screenshots, "decision-admin-list")

    # A longer range by the day, and one snapshot.
    page.goto("/traffic/")
    page.get_by_test_id("range-select").select_option("30d")
    page.get_by_test_id("snapshot-select").select_option(str(snapshot.pk))
    page.get_by_test_id("traffic-filters").locator("button[type=submit]").click()
    page.wait_for_url(f"**/traffic/?range=30d&snapshot={snapshot.pk}", wait_until="load")
    by_day = assert_chart_drawn(page, "model-chart")
    assert by_day["datasets"] == [30] * 4
    page_log.assert_clean(live_server.url)


def test_the_playground_says_clearly_when_no_snapshot_is_active(
        page: Page, page_log: PageLog, live_server, user, fresh_service, screenshots: Path,
) -> None:  # type: ignore[no-untyped-def]
    from routing.models import RoutingDecision

    # Reading and asking need a log-in.
    page.goto("/playground/")
    expect(page.locator("h1")).to_have_text("Log in")
    anonymous = Client().post("/playground/", {"query": "What is 2 + 3?", "strategy": "direct", "samples": "1",
                                               "temperature": "0"})
    assert anonymous.status_code == 302 and anonymous["Location"].startswith("/login/?next=/playground/")
    assert not RoutingDecision.objects.exists()

    log_in(page, live_server)
    page.click("header nav >> text=Playground")
    page.wait_for_url("**/playground/", wait_until="load")
    expect(page.get_by_test_id("no-active-snapshot")).to_be_visible()
    page.fill("#id_query", "What is 2 + 3?")
    page.get_by_test_id("ask").click()
    error = page.get_by_test_id("serving-error")
    expect(error).to_be_visible()
    expect(page.get_by_test_id("serving-error-message")).to_contain_text("No router snapshot is active")
    expect(error).to_contain_text("HTTP 503")
    expect(page.locator("#id_query")).to_have_value("What is 2 + 3?")  # the form keeps what was asked
    expect(page.get_by_test_id("answer")).to_have_count(0)
    shot(page, screenshots, "playground-error")

    # A bad form never reaches the service.
    page.fill("#id_samples", "0")
    page.get_by_test_id("ask").click()
    expect(page.locator(".error[role=alert]")).to_contain_text("greater than or equal to 1")

    # The refused request is logged like any other.
    failed = RoutingDecision.objects.get(endpoint=RoutingDecision.Endpoint.PLAYGROUND)
    assert (failed.status_code, failed.user, failed.chosen_model) == (503, user, "")
    page_log.assert_clean(live_server.url)


def test_a_playground_query_is_answered_end_to_end_by_the_real_llm(
        page: Page, page_log: PageLog, live_server, staff, llm, fresh_service, screenshots: Path, settings,
) -> None:  # type: ignore[no-untyped-def]
    from evaluation.models import LanguageModel
    from routing.models import RouterSnapshot, RoutingDecision

    # llama.cpp ignores n, so the samples are generated one after the other; on a busy CPU that takes a while.
    settings.ROUTE_DEADLINE_S = ANSWER_TIMEOUT_MS / 1000 - 10

    # The offline model ranks first everywhere but has no endpoint: it is skipped and SmolLM2 answers.
    snapshot = build_snapshot(version=1, label="smollm2", means={"offline-7b": [0.9, 0.9], llm.model: [0.5, 0.6]},
                              assignments=[("arith", 0)] * 3 + [("arith", 1)] * 3, team_size=2)
    LanguageModel.objects.filter(name=llm.model).update(base_url=llm.base_url, served_model_id=llm.model)
    RouterSnapshot.objects.filter(pk=snapshot.pk).update(is_active=True)

    log_in(page, live_server)
    page.goto("/playground/")
    expect(page.get_by_test_id("active-snapshot")).to_have_text("snapshot v1")
    page.fill("#id_query", "Tom has 2 apples and buys 3 more. How many apples does he have?")
    page.select_option("#id_strategy", "self_consistency")
    page.fill("#id_samples", "3")
    page.fill("#id_temperature", "0.7")
    page.select_option("#id_task_type", "math")
    page.fill("#id_max_tokens", "32")
    # The page comes back once the samples are in: SmolLM2 on a CPU takes a while.
    with page.expect_navigation(timeout=ANSWER_TIMEOUT_MS, wait_until="load"):
        page.get_by_test_id("ask").click(no_wait_after=True)
    expect(page.get_by_test_id("answer")).to_be_visible()

    expect(page.get_by_test_id("answer-model")).to_contain_text(llm.model)
    # A model without an endpoint is skipped by design: not a fallback (a failure or an open circuit would be).
    expect(page.get_by_test_id("fallback-badge")).to_have_count(0)
    candidates = page.locator("table[data-testid=candidates] tbody tr")
    expect(candidates).to_have_count(2)
    expect(candidates.nth(0)).to_have_attribute("data-model", "offline-7b")
    expect(candidates.nth(0).locator("[data-col=outcome]")).to_contain_text("skipped: no endpoint")
    expect(candidates.nth(1).locator("[data-col=outcome]")).to_have_text("answered")
    expect(page.locator("table[data-testid=sample-table] tr[data-testid=sample]")).to_have_count(3)
    expect(page.get_by_test_id("decision-cluster")).to_contain_text("similarity")
    expect(page.get_by_test_id("timings")).to_contain_text("generate")
    assert page.get_by_test_id("response").inner_text().strip()
    if page.locator("table[data-testid=vote-table] tbody tr").count():
        assert_chart_drawn(page, "vote-chart")
    shot(page, screenshots, "playground-answer")

    # The decision is in the log (written inline in the tests), and the staff link opens it in the admin.
    logged = RoutingDecision.objects.get(endpoint=RoutingDecision.Endpoint.PLAYGROUND)
    assert (logged.user, logged.chosen_model, logged.fallback, logged.snapshot_id) == (staff, llm.model, False, snapshot.pk)
    assert len(logged.samples) == 3 and logged.task_type == "math"
    page.get_by_test_id("admin-link").click()
    page.wait_for_url(f"**/admin/routing/routingdecision/{logged.pk}/change/", wait_until="load")
    expect(page.locator(".field-samples_table pre.decision-text")).to_have_count(3)
    expect(page.locator(".field-candidates_table")).to_contain_text("no endpoint")
    shot(page, screenshots, "playground-decision-admin")

    # And it counts on the traffic page.
    page.goto("/traffic/")
    expect(page.get_by_test_id("stat-requests")).to_have_text("1")
    assert_chart_drawn(page, "model-chart")
    page_log.assert_clean(live_server.url)
