"""Read-only queries over the decision log for the traffic page: requests over time, routing per category, latency."""
from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.db.models import Aggregate, Avg, Count, FloatField, Q, QuerySet
from django.db.models.functions import Trunc
from django.utils import timezone

from routing.models import RouterSnapshot, RoutingDecision

TOP_CLUSTERS = 8
TOP_MODELS = 8
LATEST = 20
OTHER = "other"
NOT_ROUTED = "not routed"
NO_ANSWER = "no answer"
NO_CATEGORY = "(no category)"


@dataclass(frozen=True)
class TrafficRange:
    key: str
    label: str
    span: timedelta
    bucket: str  # "hour" or "day"


# A day by the hour; a week by the hour (168 bars are still readable); a month and a quarter by the day.
RANGES: dict[str, TrafficRange] = {
    r.key: r for r in (
        TrafficRange("24h", "last 24 hours", timedelta(hours=24), "hour"),
        TrafficRange("7d", "last 7 days", timedelta(days=7), "hour"),
        TrafficRange("30d", "last 30 days", timedelta(days=30), "day"),
        TrafficRange("90d", "last 90 days", timedelta(days=90), "day"),
    )
}
DEFAULT_RANGE = "24h"
_STEPS = {"hour": timedelta(hours=1), "day": timedelta(days=1)}


@dataclass(frozen=True)
class Window:
    """The buckets of a range: ``buckets[0]`` is the start (inclusive), ``end`` the end of the last (exclusive)."""

    range: TrafficRange
    buckets: tuple[datetime, ...]
    end: datetime

    @property
    def start(self) -> datetime:
        return self.buckets[0]

    @property
    def labels(self) -> list[str]:
        """A short label per bucket: the hour (with the date when the range spans days), or the date."""
        if self.range.bucket == "day":
            return [b.strftime("%m-%d") for b in self.buckets]
        if self.range.span <= timedelta(hours=24):
            return [b.strftime("%H:00") for b in self.buckets]
        return [b.strftime("%m-%d %H:00") for b in self.buckets]


def traffic_window(range_key: str = DEFAULT_RANGE, *, now: datetime | None = None) -> Window:
    """The buckets of a named range (unknown names get the default) that end with the current hour or day."""
    spec = RANGES.get(range_key, RANGES[DEFAULT_RANGE])
    step = _STEPS[spec.bucket]
    local = timezone.localtime(now or timezone.now())
    current = local.replace(minute=0, second=0, microsecond=0)
    if spec.bucket == "day":
        current = current.replace(hour=0)
    count = int(spec.span / step)
    buckets = tuple(current - step * (count - 1 - i) for i in range(count))
    return Window(range=spec, buckets=buckets, end=current + step)


def _decisions(window: Window, snapshot: RouterSnapshot | None) -> QuerySet[RoutingDecision]:
    qs = RoutingDecision.objects.filter(created_at__gte=window.start, created_at__lt=window.end)
    return qs.filter(snapshot=snapshot) if snapshot is not None else qs


def _bucketed(qs: QuerySet[RoutingDecision], window: Window, *fields: str) -> list[dict[str, Any]]:
    """Counts per (bucket, fields), in the current time zone."""
    bucket = Trunc("created_at", window.range.bucket, tzinfo=timezone.get_current_timezone())
    return list(qs.annotate(bucket=bucket).values("bucket", *fields).annotate(n=Count("id")).order_by())


@dataclass(frozen=True)
class Series:
    label: str
    counts: list[int]
    cluster: int | None = None  # the cluster a series counts (its colour on the charts), else None

    @property
    def total(self) -> int:
        return sum(self.counts)


@dataclass(frozen=True)
class TimeSeries:
    """Requests per bucket of a window, one series per cluster or model, biggest first, then "other"."""

    window: Window
    series: list[Series]

    @property
    def total(self) -> int:
        return sum(s.total for s in self.series)


def _series(window: Window, rows: list[dict[str, Any]], key: Any, *, top: int,
            kept_last: tuple[Any, ...] = ()) -> list[tuple[Any, list[int]]]:
    """Fold rows into per-key counts per bucket; keep the ``top`` biggest keys, sum the rest into OTHER."""
    position = {b: i for i, b in enumerate(window.buckets)}
    counts: dict[Any, list[int]] = defaultdict(lambda: [0] * len(window.buckets))
    for row in rows:
        i = position.get(timezone.localtime(row["bucket"]))
        if i is not None:
            counts[key(row)][i] += row["n"]
    ordinary = sorted((k for k in counts if k not in kept_last), key=lambda k: (-sum(counts[k]), str(k)))
    kept = [(k, counts[k]) for k in ordinary[:top]]
    rest = ordinary[top:]
    if rest:
        kept.append((OTHER, [sum(counts[k][i] for k in rest) for i in range(len(window.buckets))]))
    kept += [(k, counts[k]) for k in kept_last if k in counts]
    return kept


def traffic_by_cluster(window: Window, *, snapshot: RouterSnapshot | None = None,
                       top: int = TOP_CLUSTERS) -> TimeSeries:
    """Requests per cluster over time: the ``top`` busiest clusters, "other", and those never routed (errors)."""
    rows = _bucketed(_decisions(window, snapshot), window, "snapshot__version", "cluster")
    versions = {r["snapshot__version"] for r in rows if r["cluster"] is not None}

    def key(row: dict[str, Any]) -> Any:
        if row["cluster"] is None:
            return NOT_ROUTED
        return (row["snapshot__version"] or 0, row["cluster"])

    series = []
    for k, counts in _series(window, rows, key, top=top, kept_last=(NOT_ROUTED,)):
        if isinstance(k, tuple):
            version, cluster = k
            # Cluster 3 of one snapshot is not cluster 3 of another: name the snapshot when there are several.
            label = f"cluster {cluster}" if len(versions) <= 1 else f"v{version} cluster {cluster}"
            series.append(Series(label=label, counts=counts, cluster=cluster))
        else:
            series.append(Series(label=k, counts=counts))
    return TimeSeries(window=window, series=series)


def traffic_by_model(window: Window, *, snapshot: RouterSnapshot | None = None, top: int = TOP_MODELS) -> TimeSeries:
    """Requests per answering model over time: the ``top`` busiest, "other", and those no model answered."""
    rows = _bucketed(_decisions(window, snapshot), window, "chosen_model")
    series = _series(window, rows, lambda r: r["chosen_model"] or NO_ANSWER, top=top, kept_last=(NO_ANSWER,))
    return TimeSeries(window=window, series=[Series(label=k, counts=counts) for k, counts in series])


@dataclass(frozen=True)
class CategoryRow:
    category: str
    total: int
    counts: dict[str, int]  # model -> decisions it answered

    def share(self, model: str) -> float:
        return self.counts.get(model, 0) / self.total if self.total else 0.0


@dataclass(frozen=True)
class CategoryRouting:
    """Which model answered the queries of each category (the paper's Figure 9)."""

    models: list[str]  # by decisions answered, most first
    rows: list[CategoryRow]  # by category name

    def shares(self) -> list[list[float]]:
        """Per model, its share of each row: the segments of the stacked bars."""
        return [[row.share(m) for row in self.rows] for m in self.models]


def routing_by_category(window: Window, *, snapshot: RouterSnapshot | None = None) -> CategoryRouting:
    """For each category, how many of its answered queries each model answered."""
    rows = (_decisions(window, snapshot).exclude(chosen_model="").values("category", "chosen_model")
            .annotate(n=Count("id")).order_by())
    per_category: dict[str, Counter[str]] = defaultdict(Counter)
    per_model: Counter[str] = Counter()
    for row in rows:
        per_category[row["category"] or NO_CATEGORY][row["chosen_model"]] += row["n"]
        per_model[row["chosen_model"]] += row["n"]
    models = sorted(per_model, key=lambda m: (-per_model[m], m))
    return CategoryRouting(
        models=models,
        rows=[CategoryRow(category=c, total=per_category[c].total(), counts=dict(per_category[c]))
              for c in sorted(per_category)],
    )


class _Percentile(Aggregate):
    """PostgreSQL's continuous percentile (``fraction`` in [0, 1]) of an expression."""

    function = "PERCENTILE_CONT"
    template = "%(function)s(%(fraction)s) WITHIN GROUP (ORDER BY %(expressions)s)"
    output_field = FloatField()

    def __init__(self, expression: str, *, fraction: float) -> None:
        super().__init__(expression, fraction=float(fraction))


ERROR = Q(status_code__gte=400) | ~Q(error="")


@dataclass(frozen=True)
class TrafficSummary:
    requests: int
    answered: int
    fallbacks: int
    errors: int
    p50_ms: float | None  # latency of the answered requests
    p95_ms: float | None
    agreement: float | None  # mean agreement of the answered requests that voted


def traffic_summary(window: Window, *, snapshot: RouterSnapshot | None = None) -> TrafficSummary:
    qs = _decisions(window, snapshot)
    counts = qs.aggregate(requests=Count("id"), fallbacks=Count("id", filter=Q(fallback=True)),
                          errors=Count("id", filter=ERROR))
    answered = qs.exclude(ERROR)
    latency = answered.aggregate(p50=_Percentile("total_ms", fraction=0.5), p95=_Percentile("total_ms", fraction=0.95),
                                 n=Count("id"))
    agreement = answered.aggregate(mean=Avg("agreement"))["mean"]
    return TrafficSummary(
        requests=counts["requests"], answered=latency["n"], fallbacks=counts["fallbacks"], errors=counts["errors"],
        p50_ms=latency["p50"], p95_ms=latency["p95"], agreement=agreement,
    )


def decisions_latest(*, snapshot: RouterSnapshot | None = None, limit: int = LATEST) -> list[RoutingDecision]:
    qs = RoutingDecision.objects.select_related("snapshot", "user").order_by("-created_at", "-id")
    if snapshot is not None:
        qs = qs.filter(snapshot=snapshot)
    return list(qs[:limit])


def decisions_exist() -> bool:
    return RoutingDecision.objects.exists()


def decision_snapshots() -> list[RouterSnapshot]:
    """The snapshots that have routed requests, newest first, for the traffic page's snapshot choice."""
    return list(RouterSnapshot.objects.filter(decisions__isnull=False).distinct().order_by("-version"))
