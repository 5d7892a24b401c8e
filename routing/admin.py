"""Django admin for the routing tables, with filters and search."""
from __future__ import annotations

from urllib.parse import urlencode

from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect
from django.urls import URLPattern, path, reverse
from django.utils import timezone
from django.utils.html import format_html, format_html_join
from django.utils.safestring import SafeString
from django.utils.text import Truncator

from avengers_web.parsing import parse_id
from routing.models import (
    EmbeddingJob,
    RouterSnapshot,
    RoutingDecision,
    SnapshotActivation,
    SnapshotCluster,
    SnapshotProfile,
    SnapshotQuery,
)
from routing.serving.traffic import ERROR


@admin.register(EmbeddingJob)
class EmbeddingJobAdmin(admin.ModelAdmin):
    list_display = ["id", "embedder", "status", "done", "total", "created_by", "created_at", "finished_at"]
    list_filter = ["status", "embedder"]
    search_fields = ["embedder", "message"]


READ_WRITE = ["label"]  # a snapshot's free text; is_active changes through activation, which records who did it


@admin.register(RouterSnapshot)
class RouterSnapshotAdmin(admin.ModelAdmin):
    """Snapshots are built by the build service and immutable: only the label can be edited here.

    A new snapshot is built or derived on the dashboard (or the API); it is activated there too, which records
    who did it. Everything else is what the build measured and what routing serves, so it is shown, never edited.
    """

    list_display = ["version", "label", "kind", "status", "embedder", "method", "k", "router", "routes_with",
                    "is_active", "revision", "created_at"]
    list_filter = ["status", "kind", "is_active", "method", "embedder", "router"]
    search_fields = ["label", "message"]

    def get_readonly_fields(self, request: HttpRequest, obj: RouterSnapshot | None = None) -> list[str]:
        fields = [f.name for f in RouterSnapshot._meta.get_fields()
                  if (f.concrete or f.many_to_many) and not f.auto_created and f.name not in READ_WRITE]
        return [*fields, "routes_with"]

    def get_fields(self, request: HttpRequest, obj: RouterSnapshot | None = None) -> list[str]:
        return [*READ_WRITE, *self.get_readonly_fields(request, obj)]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    @admin.display(description="routes with")
    def routes_with(self, snapshot: RouterSnapshot) -> str:
        return (snapshot.router_chosen or {}).get("label", "")


class _DerivedAdmin(admin.ModelAdmin):
    """A snapshot's clusters, assignments and profiles: written by its build, shown here, deleted with it."""

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False


@admin.register(SnapshotCluster)
class SnapshotClusterAdmin(_DerivedAdmin):
    list_display = ["snapshot", "index", "size", "dimensions", "order"]
    list_filter = ["snapshot"]
    search_fields = ["snapshot__label"]
    exclude = ["centroid"]


@admin.register(SnapshotQuery)
class SnapshotQueryAdmin(_DerivedAdmin):
    list_display = ["snapshot", "query", "cluster"]
    list_filter = ["snapshot"]
    search_fields = ["query__external_id", "query__text"]


@admin.register(SnapshotProfile)
class SnapshotProfileAdmin(_DerivedAdmin):
    list_display = ["snapshot", "cluster", "model", "rank", "n", "mean", "estimate"]
    list_filter = ["snapshot", "model"]
    search_fields = ["model__name"]


@admin.register(SnapshotActivation)
class SnapshotActivationAdmin(admin.ModelAdmin):
    """Who activated which snapshot: written by activation (routing.services), never by hand."""

    list_display = ["snapshot", "activated_by", "activated_at"]
    list_filter = ["activated_at"]
    search_fields = ["snapshot__label", "activated_by__username"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: SnapshotActivation | None = None) -> bool:
        return False


# ---------------------------------------------------------------------------------------------- decision log

STAGES = ("embed", "decide", "generate", "vote", "total")


class ClusterFilter(admin.SimpleListFilter):
    """The clusters that occur in the log (of the chosen snapshot, when one is), and "not routed"."""

    title = "cluster"
    parameter_name = "cluster"

    def lookups(self, request: HttpRequest, model_admin: admin.ModelAdmin) -> list[tuple[str, str]]:  # type: ignore[type-arg]
        qs = RoutingDecision.objects.exclude(cluster=None)
        snapshot = request.GET.get("snapshot__id__exact", "")
        snapshot_id = parse_id(snapshot)
        if snapshot_id is not None:
            qs = qs.filter(snapshot_id=snapshot_id)
        clusters = qs.values_list("cluster", flat=True).distinct().order_by("cluster")
        return [(str(c), str(c)) for c in clusters] + [("none", "not routed")]

    def queryset(self, request: HttpRequest, queryset: QuerySet[RoutingDecision]) -> QuerySet[RoutingDecision]:
        value = self.value()
        if value == "none":
            return queryset.filter(cluster__isnull=True)
        cluster = parse_id(value)
        if cluster is not None:
            return queryset.filter(cluster=cluster)
        return queryset


class HasErrorFilter(admin.SimpleListFilter):
    """Requests that failed (an HTTP error status or an error message) or not."""

    title = "has error"
    parameter_name = "has_error"

    def lookups(self, request: HttpRequest, model_admin: admin.ModelAdmin) -> list[tuple[str, str]]:  # type: ignore[type-arg]
        return [("yes", "Yes"), ("no", "No")]

    def queryset(self, request: HttpRequest, queryset: QuerySet[RoutingDecision]) -> QuerySet[RoutingDecision]:
        if self.value() == "yes":
            return queryset.filter(ERROR)
        if self.value() == "no":
            return queryset.exclude(ERROR)
        return queryset


def _number(value: object, digits: int = 3) -> str:
    if value is None or value == "":
        return "–"
    if isinstance(value, bool) or not isinstance(value, int | float):
        return str(value)
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def _code(value: object, limit: int = 60) -> SafeString | str:
    """An extracted answer or key in <code>, cut to ``limit`` characters (the full response is beside it)."""
    if value is None:
        return "–"
    return format_html('<code title="{}">{}</code>', value, Truncator(str(value)).chars(limit))


def _table(headers: list[str], rows: list[list[object]], *, css: str = "", empty: str = "none",
           row_classes: list[str] | None = None) -> SafeString:
    """A small HTML table; cells are escaped unless they are already safe (format_html)."""
    if not rows:
        return format_html('<span class="quiet">{}</span>', empty)
    head = format_html_join("", "<th>{}</th>", ((h,) for h in headers))
    classes = row_classes or [""] * len(rows)
    body = format_html_join("", '<tr class="{}">{}</tr>', (
        (cls, format_html_join("", "<td>{}</td>", ((cell,) for cell in row))) for cls, row in zip(classes, rows)
    ))
    return format_html('<table class="decision-table {}"><thead><tr>{}</tr></thead><tbody>{}</tbody></table>',
                       css, head, body)


@admin.register(RoutingDecision)
class RoutingDecisionAdmin(admin.ModelAdmin):
    """The decision log, read-only: rows are written by the routing service, and only a superuser may delete them."""

    list_display = ["time", "endpoint", "user", "snapshot", "cluster", "category", "chosen_model", "fallback",
                    "status", "total_ms_display", "short_query"]
    list_display_links = ["time"]
    list_filter = [("snapshot", admin.RelatedOnlyFieldListFilter), ClusterFilter, "chosen_model", "category",
                   "fallback", HasErrorFilter, "endpoint"]
    list_select_related = ["snapshot", "user"]
    date_hierarchy = "created_at"
    search_fields = ["query", "request_id", "final_answer", "chosen_model"]
    list_per_page = 50
    fieldsets = [
        ("Request", {"fields": ["request_id", "created_at", "endpoint", "user", "token_prefix", "status", "error",
                                "query_text", "query_sha256", "query_chars"]}),
        ("Routing", {"fields": ["snapshot", "cluster_link", "similarity_display", "category", "task_type", "strategy",
                                "runner_ups_table", "candidates_table"]}),
        ("Answer", {"fields": ["final_answer", "chosen_model", "agreement_display", "fallback", "models_used_display",
                               "tally_table", "failures_table", "tokens"]}),
        ("Samples", {"fields": ["samples_table"]}),
        ("Timings", {"fields": ["timings_table"]}),
    ]
    readonly_fields = [f for _, options in fieldsets for f in options["fields"]]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: RoutingDecision | None = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: RoutingDecision | None = None) -> bool:
        return bool(request.user.is_superuser) and super().has_delete_permission(request, obj)

    def get_urls(self) -> list[URLPattern]:
        view = self.admin_site.admin_view(self.by_request_view)
        return [path("request/<str:request_id>/", view, name="routing_routingdecision_by_request"),
                *super().get_urls()]

    def by_request_view(self, request: HttpRequest, request_id: str) -> HttpResponse:
        """Open a decision by its request id; the log is written just after the response, so it may not be there yet."""
        if not self.has_view_permission(request):
            raise PermissionDenied
        decision = RoutingDecision.objects.filter(request_id=request_id).first()
        if decision is not None:
            return redirect("admin:routing_routingdecision_change", decision.pk)
        messages.info(request, f"Request {request_id} is not in the log yet: decisions are written just after "
                               "the response. Reload in a moment.")
        return redirect(reverse("admin:routing_routingdecision_changelist") + "?" + urlencode({"q": request_id}))

    # --------------------------------------------------------------------------------------- list columns

    @admin.display(description="time", ordering="created_at")
    def time(self, obj: RoutingDecision) -> str:
        return timezone.localtime(obj.created_at).strftime("%Y-%m-%d %H:%M:%S")

    @admin.display(description="status", ordering="status_code")
    def status(self, obj: RoutingDecision) -> SafeString:
        colour = "#c92a2a" if obj.status_code >= 400 or obj.error else "#2b8a3e"
        return format_html('<span style="color:{}" title="{}">{}</span>', colour, obj.error, obj.status_code)

    @admin.display(description="total ms", ordering="total_ms")
    def total_ms_display(self, obj: RoutingDecision) -> str:
        return f"{obj.total_ms:.0f}"

    @admin.display(description="query")
    def short_query(self, obj: RoutingDecision) -> str:
        if not obj.query:
            return f"(not logged, {obj.query_chars} chars)"
        return Truncator(" ".join(obj.query.split())).chars(80)

    # --------------------------------------------------------------------------------------- detail fields

    @admin.display(description="query")
    def query_text(self, obj: RoutingDecision) -> SafeString:
        if not obj.query:
            return format_html('<span class="quiet">{}</span>', "not logged (AVENGERS_LOG_QUERY_TEXT is off)")
        return format_html('<pre class="decision-text">{}</pre>', obj.query)

    @admin.display(description="cluster")
    def cluster_link(self, obj: RoutingDecision) -> SafeString | str:
        if obj.cluster is None:
            return "not routed"
        if obj.snapshot_id is None:
            return str(obj.cluster)
        url = reverse("cluster-detail", args=[obj.snapshot_id, obj.cluster])
        return format_html('<a href="{}">{}</a> (leaderboard on the dashboard)', url, obj.cluster)

    @admin.display(description="similarity")
    def similarity_display(self, obj: RoutingDecision) -> str:
        return _number(obj.similarity)

    @admin.display(description="agreement")
    def agreement_display(self, obj: RoutingDecision) -> str:
        if obj.agreement is None:
            return "–"
        return f"{obj.agreement:.0%} of {len(obj.samples)} sample{'s' if len(obj.samples) != 1 else ''}"

    @admin.display(description="models used")
    def models_used_display(self, obj: RoutingDecision) -> str:
        return ", ".join(str(m) for m in obj.models_used or []) or "–"

    @admin.display(description="runner-ups")
    def runner_ups_table(self, obj: RoutingDecision) -> SafeString:
        rows = [[r.get("cluster", "–"), _number(r.get("similarity"))] for r in obj.runner_ups or []]
        return _table(["cluster", "similarity"], rows)

    @admin.display(description="candidates")
    def candidates_table(self, obj: RoutingDecision) -> SafeString:
        rows, classes = [], []
        for c in obj.candidates or []:
            passed_over = c.get("skipped") or c.get("failed")
            if c.get("skipped"):
                outcome = f"skipped: {c['skipped']}"
            elif c.get("failed"):
                outcome = f"failed: {c['failed']}"
            else:
                outcome = "answered" if c.get("model") == obj.chosen_model else "–"
            rows.append([c.get("rank", "–"), c.get("model", "–"), _number(c.get("score")),
                         "yes" if c.get("in_team") else ("no" if "in_team" in c else "–"), outcome])
            classes.append("skipped" if passed_over else ("chosen" if c.get("model") == obj.chosen_model else ""))
        return _table(["rank", "model", "score", "in team", "outcome"], rows, row_classes=classes,
                      empty="none recorded")

    @admin.display(description="vote tally")
    def tally_table(self, obj: RoutingDecision) -> SafeString:
        tally = [(str(t[0]), int(t[1])) for t in obj.tally or [] if len(t) >= 2]
        total = sum(v for _, v in tally) or 1
        rows = [[format_html("<code>{}</code>", answer), votes, f"{votes / total:.0%}",
                 format_html('<span class="decision-bar" style="width:{}px"></span>', round(160 * votes / total))]
                for answer, votes in tally]
        return _table(["answer", "votes", "share", ""], rows, css="tally", row_classes=(
            ["chosen"] + [""] * (len(rows) - 1)), empty="no votes (a single sample or no valid answer)")

    @admin.display(description="failures")
    def failures_table(self, obj: RoutingDecision) -> SafeString:
        rows = [[f.get("model", "–"), f.get("kind", "–"), f.get("message", "")] for f in obj.failures or []]
        return _table(["model", "kind", "message"], rows)

    @admin.display(description="tokens (prompt / completion)")
    def tokens(self, obj: RoutingDecision) -> str:
        return f"{_number(obj.prompt_tokens)} / {_number(obj.completion_tokens)}"

    @admin.display(description="samples")
    def samples_table(self, obj: RoutingDecision) -> SafeString:
        winner = str(obj.tally[0][0]) if obj.tally and len(obj.tally[0]) >= 2 else None
        rows, classes = [], []
        for s in obj.samples or []:
            rows.append([s.get("model", "–"), s.get("index", "–"), _code(s.get("answer")), _code(s.get("key")),
                         s.get("finish_reason") or "–",
                         format_html('<pre class="decision-text">{}</pre>', s.get("text") or "(empty)")])
            won = winner is not None and winner in (str(s.get("key")), str(s.get("answer")))
            classes.append("chosen" if won else "")
        return _table(["model", "index", "answer", "key", "finish", "response"], rows, css="samples",
                      row_classes=classes)

    @admin.display(description="timings (ms)")
    def timings_table(self, obj: RoutingDecision) -> SafeString:
        timings = obj.timings_ms or {}
        stages = [s for s in STAGES if s in timings] + sorted(k for k in timings if k not in STAGES)
        rows = [[stage, _number(timings[stage], 1)] for stage in stages]
        if "total" not in timings:
            rows.append(["total", _number(obj.total_ms, 1)])
        return _table(["stage", "ms"], rows)
