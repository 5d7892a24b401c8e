"""The traffic page's numbers, read from decision-log rows written by hand at known times."""
from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from routing.models import RouterSnapshot, RoutingDecision
from routing.serving import traffic

pytestmark = pytest.mark.django_db

NOW = datetime(2026, 12, 1, 15, 30, tzinfo=UTC)
_ids = itertools.count()


def decision(*, at: datetime, **fields: Any) -> RoutingDecision:
    n = next(_ids)
    values: dict[str, Any] = {
        "request_id": f"req-{n}", "created_at": at, "endpoint": RoutingDecision.Endpoint.ANSWER, "query": f"query {n}",
        "query_sha256": f"{n:064d}", "query_chars": 8, "cluster": 0, "category": "gsm8k", "chosen_model": "alpha",
        "total_ms": 100.0,
    }
    return RoutingDecision.objects.create(**{**values, **fields})


def snapshot(version: int) -> RouterSnapshot:
    return RouterSnapshot.objects.create(version=version, embedder="minilm", k=8, status=RouterSnapshot.Status.DONE)


def test_a_day_is_24_hourly_buckets_ending_with_the_current_hour() -> None:
    window = traffic.traffic_window("24h", now=NOW)
    assert len(window.buckets) == 24
    assert window.start == datetime(2026, 11, 30, 16, tzinfo=UTC)
    assert window.buckets[-1] == datetime(2026, 12, 1, 15, tzinfo=UTC)
    assert window.end == datetime(2026, 12, 1, 16, tzinfo=UTC)
    assert window.labels[0] == "16:00" and window.labels[-1] == "15:00"


def test_a_week_is_hourly_and_a_month_daily() -> None:
    week = traffic.traffic_window("7d", now=NOW)
    assert len(week.buckets) == 168 and week.range.bucket == "hour"
    assert week.labels[-1] == "12-01 15:00"
    month = traffic.traffic_window("30d", now=NOW)
    assert len(month.buckets) == 30 and month.range.bucket == "day"
    assert month.start == datetime(2026, 11, 2, tzinfo=UTC)
    assert month.end == datetime(2026, 12, 2, tzinfo=UTC)
    assert month.labels[-1] == "12-01"


def test_an_unknown_range_gets_the_default() -> None:
    assert traffic.traffic_window("1y", now=NOW).range.key == traffic.DEFAULT_RANGE


def test_it_counts_requests_per_cluster_per_hour() -> None:
    for _ in range(3):
        decision(at=NOW - timedelta(minutes=10), cluster=3)
    decision(at=NOW - timedelta(minutes=20), cluster=5)
    decision(at=NOW - timedelta(hours=2), cluster=3)
    decision(at=NOW - timedelta(hours=1), cluster=None, chosen_model="", status_code=503, error="no model")
    decision(at=NOW - timedelta(hours=25), cluster=3)  # before the window

    window = traffic.traffic_window("24h", now=NOW)
    data = traffic.traffic_by_cluster(window)
    assert [s.label for s in data.series] == ["cluster 3", "cluster 5", traffic.NOT_ROUTED]
    assert [s.cluster for s in data.series] == [3, 5, None]
    three = data.series[0].counts
    assert three[-1] == 3 and three[-3] == 1 and sum(three) == 4
    assert data.series[1].counts[-1] == 1
    assert data.series[2].counts[-2] == 1
    assert data.total == 6


def test_clusters_beyond_the_top_are_summed_into_other() -> None:
    for cluster, n in ((1, 4), (2, 3), (3, 2), (4, 1)):
        for _ in range(n):
            decision(at=NOW - timedelta(minutes=5), cluster=cluster)
    data = traffic.traffic_by_cluster(traffic.traffic_window("24h", now=NOW), top=2)
    assert [(s.label, s.total) for s in data.series] == [("cluster 1", 4), ("cluster 2", 3), (traffic.OTHER, 3)]


def test_clusters_of_several_snapshots_are_named_with_their_version() -> None:
    v1, v2 = snapshot(1), snapshot(2)
    decision(at=NOW - timedelta(minutes=5), snapshot=v1, cluster=3)
    decision(at=NOW - timedelta(minutes=5), snapshot=v2, cluster=3)
    decision(at=NOW - timedelta(minutes=5), snapshot=v2, cluster=3)
    window = traffic.traffic_window("24h", now=NOW)
    data = traffic.traffic_by_cluster(window)
    assert [(s.label, s.total) for s in data.series] == [("v2 cluster 3", 2), ("v1 cluster 3", 1)]
    only_v1 = traffic.traffic_by_cluster(window, snapshot=v1)
    assert [(s.label, s.total) for s in only_v1.series] == [("cluster 3", 1)]


def test_it_counts_requests_per_model_per_day() -> None:
    decision(at=NOW - timedelta(days=1), chosen_model="alpha")
    decision(at=NOW - timedelta(days=1), chosen_model="beta")
    decision(at=NOW, chosen_model="beta")
    decision(at=NOW - timedelta(days=3), chosen_model="beta")
    decision(at=NOW - timedelta(days=3), chosen_model="", status_code=503)
    decision(at=NOW - timedelta(days=40), chosen_model="gamma")  # before the window

    window = traffic.traffic_window("30d", now=NOW)
    data = traffic.traffic_by_model(window)
    assert [s.label for s in data.series] == ["beta", "alpha", traffic.NO_ANSWER]
    beta = data.series[0].counts
    assert (beta[-1], beta[-2], beta[-4]) == (1, 1, 1)
    assert data.series[1].counts[-2] == 1
    assert data.series[2].counts[-4] == 1
    assert data.total == 5


def test_each_category_shares_its_answered_requests_among_the_models() -> None:
    for model, n in (("alpha", 3), ("beta", 1)):
        for _ in range(n):
            decision(at=NOW, category="gsm8k", chosen_model=model)
    for model, n in (("beta", 4), ("gamma", 1)):
        for _ in range(n):
            decision(at=NOW, category="mmlu", chosen_model=model)
    decision(at=NOW, category="", chosen_model="gamma")
    decision(at=NOW, category="mmlu", chosen_model="", status_code=503)  # not answered: not counted

    data = traffic.routing_by_category(traffic.traffic_window("24h", now=NOW))
    assert data.models == ["beta", "alpha", "gamma"]  # 5, 3, 2 answers
    assert [(r.category, r.total) for r in data.rows] == [(traffic.NO_CATEGORY, 1), ("gsm8k", 4), ("mmlu", 5)]
    gsm8k = data.rows[1]
    assert gsm8k.share("alpha") == pytest.approx(0.75) and gsm8k.share("beta") == pytest.approx(0.25)
    assert gsm8k.share("gamma") == 0.0
    for row in data.rows:
        assert sum(row.share(m) for m in data.models) == pytest.approx(1.0)
    # The chart's segments: per model, its share of each row, in row order.
    assert data.shares()[0] == pytest.approx([0.0, 0.25, 0.8])


def test_the_summary_counts_fallbacks_errors_and_latency_percentiles() -> None:
    for i in range(10):  # answered in 100, 200, ..., 1000 ms
        decision(at=NOW, total_ms=100.0 * (i + 1), fallback=i < 2, agreement=0.5 if i % 2 else 1.0)
    decision(at=NOW, total_ms=5.0, status_code=503, chosen_model="", error="no active snapshot")
    decision(at=NOW, total_ms=7.0, status_code=200, error="writer hiccup")  # an error message alone is an error

    summary = traffic.traffic_summary(traffic.traffic_window("24h", now=NOW))
    assert (summary.requests, summary.answered, summary.fallbacks, summary.errors) == (12, 10, 2, 2)
    assert summary.p50_ms == pytest.approx(550.0)
    assert summary.p95_ms == pytest.approx(955.0)
    assert summary.agreement == pytest.approx(0.75)


def test_the_summary_of_an_empty_range_has_no_latency() -> None:
    decision(at=NOW - timedelta(days=2))
    summary = traffic.traffic_summary(traffic.traffic_window("24h", now=NOW))
    assert (summary.requests, summary.p50_ms, summary.p95_ms, summary.agreement) == (0, None, None, None)


def test_latest_decisions_come_newest_first_and_snapshots_are_those_with_traffic() -> None:
    v1, v2 = snapshot(1), snapshot(2)
    snapshot(3)  # no traffic
    old = decision(at=NOW - timedelta(hours=3), snapshot=v1)
    new = decision(at=NOW - timedelta(hours=1), snapshot=v2)
    assert traffic.decisions_latest() == [new, old]
    assert traffic.decisions_latest(limit=1) == [new]
    assert traffic.decisions_latest(snapshot=v1) == [old]
    assert traffic.decision_snapshots() == [v2, v1]
    assert traffic.decisions_exist()
