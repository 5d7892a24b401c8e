"""Dashboard pages for the routing service: the playground (ask the router, see its decision) and the traffic charts."""
from __future__ import annotations

from typing import Any

from django import forms
from django.conf import settings
from django.contrib.auth.views import redirect_to_login
from django.core.validators import MaxValueValidator
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.urls import reverse

from avengers_web import throttling
from evaluation.core.datasets import TASK_TYPES
from routing import selectors, selectors_traffic, serving
from routing.models import RouterSnapshot, RoutingDecision

STRATEGIES = (
    ("self_consistency", "self-consistency"),
    ("direct", "direct"),
    ("model_switch", "model switch"),
)
# Tableau 10: one colour per model, the same on every chart of the traffic page.
MODEL_COLOURS = ("#4e79a7", "#f28e2b", "#59a14f", "#e15759", "#76b7b2", "#edc948", "#b07aa1", "#ff9da7",
                 "#9c755f", "#bab0ac")
# "other" in light grey; requests that failed (never routed, or no model answered) in dark grey, apart from every
# cluster's hue and every model's colour.
GREY, FAILED = "#ced4da", "#495057"


class PlaygroundForm(forms.Form):
    query = forms.CharField(widget=forms.Textarea(attrs={"rows": 5, "placeholder": "Ask anything, e.g. a maths word problem"}),
                            strip=True)
    strategy = forms.ChoiceField(choices=STRATEGIES, help_text="Self-consistency: the best model's samples are voted on; "
                                 "direct: its one answer; model switch: the next model too when they disagree.")
    samples = forms.IntegerField(min_value=1, help_text="Samples to vote over (direct: always one).")
    temperature = forms.FloatField(min_value=0.0, max_value=2.0)
    task_type = forms.ChoiceField(choices=[("", "from the cluster")] + [(t, t) for t in TASK_TYPES], required=False,
                                  help_text="How answers are extracted and compared; by default the cluster's.")
    snapshot = forms.ModelChoiceField(queryset=RouterSnapshot.objects.none(), required=False,
                                      empty_label="the active snapshot")
    max_tokens = forms.IntegerField(min_value=1, required=False, help_text="Empty: the model's default.")

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("initial", {"strategy": settings.DEFAULT_STRATEGY, "samples": settings.DEFAULT_SAMPLES,
                                      "temperature": settings.DEFAULT_TEMPERATURE})
        super().__init__(*args, **kwargs)
        samples = self.fields["samples"]
        assert isinstance(samples, forms.IntegerField)
        samples.validators.append(MaxValueValidator(settings.MAX_SAMPLES))
        samples.widget.attrs["max"] = settings.MAX_SAMPLES
        max_tokens = self.fields["max_tokens"]
        max_tokens.validators.append(MaxValueValidator(settings.MAX_ANSWER_TOKENS))
        max_tokens.widget.attrs["max"] = settings.MAX_ANSWER_TOKENS
        snapshot = self.fields["snapshot"]
        assert isinstance(snapshot, forms.ModelChoiceField)
        snapshot.queryset = RouterSnapshot.objects.filter(status=RouterSnapshot.Status.DONE).order_by("-version")
        snapshot.label_from_instance = lambda s: f"v{s.version}" + (f" ({s.label})" if s.label else "")


def playground(request: HttpRequest) -> HttpResponse:
    """Ask the router a query (a log-in is needed, as for every write) and show how it was routed and answered.

    Queries count against the same per-minute limit as the API's (429 with Retry-After when it is used up).
    """
    if request.method == "POST" and not request.user.is_authenticated:
        return redirect_to_login(request.get_full_path())
    form = PlaygroundForm(request.POST or None)
    result: dict[str, Any] | None = None
    error = None
    wait = throttling.take_for_user(request.user) if request.method == "POST" else None
    if wait is not None:
        error = {"status": 429, "code": "throttled",
                 "message": f"Too many queries this minute; try again in {max(1, int(wait + 0.999))} s."}
        response = render(request, "routing/playground.html", {
            "form": form, "error": error, "result": None, "active": selectors.snapshot_active()}, status=429)
        response["Retry-After"] = str(max(1, int(wait + 0.999)))
        return response
    if request.method == "POST" and form.is_valid():
        data = form.cleaned_data
        snapshot = data["snapshot"]
        try:
            result = serving.answer(serving.Request(
                query=data["query"], endpoint=RoutingDecision.Endpoint.PLAYGROUND, strategy=data["strategy"],
                samples=data["samples"], temperature=data["temperature"], task_type=data["task_type"] or None,
                snapshot_id=snapshot.pk if snapshot is not None else None, max_tokens=data["max_tokens"],
                user=request.user,
            ))
        except serving.ServingError as exc:
            error = {"status": exc.status, "code": exc.code, "message": exc.message}
    return render(request, "routing/playground.html", {
        "form": form, "error": error, "result": _shape(result, request) if result is not None else None,
        "active": selectors.snapshot_active(),
    })


def _shape(result: dict[str, Any], request: HttpRequest) -> dict[str, Any]:
    """Add what the page shows beside the service's answer: skip reasons, the winning samples, the vote chart."""
    decision = result.get("decision") or {}
    candidates = []
    for c in decision.get("candidates") or []:
        if c.get("skipped"):
            outcome = f"skipped: {c['skipped']}"
        elif c.get("failed"):
            outcome = f"failed: {c['failed']}"
        else:
            outcome = "answered" if c.get("model") == result.get("model") else ""
        candidates.append({**c, "outcome": outcome, "passed_over": bool(c.get("skipped") or c.get("failed")),
                           "chosen": c.get("model") == result.get("model")})
    counted = [v for v in result.get("votes") or [] if v.get("votes")]
    total_votes = sum(v["votes"] for v in counted)
    votes = [{**v, "share": 100 * v["votes"] / total_votes} for v in counted]
    winner = votes[0]["answer"] if votes else result.get("answer")
    samples = [{**s, "won": winner is not None and winner in (s.get("key"), s.get("answer"))}
               for s in result.get("samples") or []]
    chart = None
    if len(votes) > 0:
        # The axis runs to the number of samples, so that a lone vote out of ten looks like one.
        chart = {"labels": [str(v["answer"]) for v in votes], "values": [v["votes"] for v in votes], "digits": 0,
                 "horizontal": True, "title": "Votes per answer", "highlight": [str(votes[0]["answer"])],
                 "y_max": max(len(result.get("samples") or []), total_votes), "y_title": "votes"}
    snapshot = decision.get("snapshot") or {}
    admin_url = None
    if request.user.is_staff and result.get("id"):
        admin_url = reverse("admin:routing_routingdecision_by_request", args=[result["id"]])
    agreement = result.get("agreement")
    return {**result, "candidates": candidates, "votes": votes, "samples": samples, "vote_chart": chart,
            "vote_chart_height": 70 + 30 * len(votes), "decision": decision, "snapshot": snapshot,
            "admin_url": admin_url, "agreement_pct": 100 * agreement if agreement is not None else None,
            "timings": list((result.get("timings_ms") or {}).items())}


def traffic(request: HttpRequest) -> HttpResponse:
    """Requests over time per cluster and per model, routing per category, latency and the latest decisions."""
    range_key = request.GET.get("range", selectors_traffic.DEFAULT_RANGE)
    range_key = range_key if range_key in selectors_traffic.RANGES else selectors_traffic.DEFAULT_RANGE
    choices = selectors_traffic.decision_snapshots()
    requested = request.GET.get("snapshot", "")
    snapshot = next((s for s in choices if str(s.pk) == requested), None)
    window = selectors_traffic.traffic_window(range_key)
    by_cluster = selectors_traffic.traffic_by_cluster(window, snapshot=snapshot)
    by_model = selectors_traffic.traffic_by_model(window, snapshot=snapshot)
    by_category = selectors_traffic.routing_by_category(window, snapshot=snapshot)
    colours = _model_colours(by_category.models + [s.label for s in by_model.series])
    return render(request, "routing/traffic.html", {
        "ranges": list(selectors_traffic.RANGES.values()), "range": window.range, "window": window,
        "choices": choices, "snapshot": snapshot, "any_decisions": selectors_traffic.decisions_exist(),
        "summary": selectors_traffic.traffic_summary(window, snapshot=snapshot),
        "by_category": by_category, "category_rows": [
            (row, [(m, row.counts.get(m, 0), row.share(m), colours[m]) for m in by_category.models])
            for row in by_category.rows
        ],
        "cluster_chart": _time_chart(by_cluster, "Requests per cluster", cluster_colours=True, colours=colours),
        "model_chart": _time_chart(by_model, "Requests per answering model", colours=colours),
        "category_chart": _category_chart(by_category, colours) if by_category.rows else None,
        "category_height": 90 + 36 * len(by_category.rows),
        "latest": selectors_traffic.decisions_latest(snapshot=snapshot),
    })


def _model_colours(names: list[str]) -> dict[str, str]:
    colours = {selectors_traffic.OTHER: GREY, selectors_traffic.NO_ANSWER: FAILED, selectors_traffic.NOT_ROUTED: FAILED}
    for name in names:
        if name not in colours:
            colours[name] = MODEL_COLOURS[(len(colours) - 3) % len(MODEL_COLOURS)]
    return colours


def _time_chart(data: selectors_traffic.TimeSeries, title: str, *, colours: dict[str, str],
                cluster_colours: bool = False) -> dict[str, Any] | None:
    if data.total == 0:
        return None
    series = []
    for s in data.series:
        entry: dict[str, Any] = {"label": s.label, "counts": s.counts}
        if cluster_colours and s.cluster is not None:
            entry["cluster"] = s.cluster  # coloured as on the snapshot's map
        else:
            entry["colour"] = colours.get(s.label, GREY)
        series.append(entry)
    return {"labels": data.window.labels, "series": series, "title": f"{title}, {data.window.range.label}",
            "x_title": "hour" if data.window.range.bucket == "hour" else "day", "y_title": "requests"}


def _category_chart(data: selectors_traffic.CategoryRouting, colours: dict[str, str]) -> dict[str, Any]:
    return {
        "labels": [f"{row.category} ({row.total})" for row in data.rows],
        "series": [{"label": m, "values": [round(100 * v, 2) for v in shares], "colour": colours[m]}
                   for m, shares in zip(data.models, data.shares())],
        "title": "Which model answers each category (share of its answered requests, %)",
    }
