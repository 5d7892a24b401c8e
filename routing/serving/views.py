"""Dashboard pages for the routing service: the playground (ask the router, see its decision) and the traffic charts."""
from __future__ import annotations

from typing import Any

from django import forms
from django.conf import settings
from django.core.exceptions import ValidationError
from django.contrib.auth.views import redirect_to_login
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.urls import reverse

from avengers_web import throttling
from avengers_web.routes import Routes
from avengers_web.service_errors import add_service_error
from evaluation.core.datasets import TASK_TYPES
from routing import selectors
from routing.core.dispatch import STRATEGIES, Strategy
from routing.models import RouterSnapshot, RoutingDecision
from routing.serving import ServingError, service
from routing.serving import traffic as traffic_selectors

pages = Routes()


def _strategies() -> list[Strategy]:
    """The registered strategies, the default first."""
    return sorted(STRATEGIES.values(), key=lambda strategy: strategy.name != settings.DEFAULT_STRATEGY)


def _strategies_help() -> str:
    text = "; ".join(f"{strategy.label}: {strategy.description}" for strategy in _strategies()) + "."
    return text[:1].upper() + text[1:]


# Tableau 10: one colour per model, the same on every chart of the traffic page.
MODEL_COLOURS = ("#4e79a7", "#f28e2b", "#59a14f", "#e15759", "#76b7b2", "#edc948", "#b07aa1", "#ff9da7",
                 "#9c755f", "#bab0ac")
# "other" in light grey; requests that failed (never routed, or no model answered) in dark grey, apart from every
# cluster's hue and every model's colour.
GREY, FAILED = "#ced4da", "#495057"


class PlaygroundForm(forms.Form):
    query = forms.CharField(widget=forms.Textarea(attrs={"rows": 5, "placeholder": "Ask anything, e.g. a maths word problem"}),
                            strip=True)
    strategy = forms.ChoiceField(choices=lambda: [(s.name, s.label) for s in _strategies()],
                                 help_text=_strategies_help())
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
        # A hint for the browser only: the service checks the bounds, and its refusal shows on the field.
        self.fields["samples"].widget.attrs["max"] = settings.MAX_SAMPLES
        self.fields["max_tokens"].widget.attrs["max"] = settings.MAX_ANSWER_TOKENS
        snapshot = self.fields["snapshot"]
        assert isinstance(snapshot, forms.ModelChoiceField)
        snapshot.queryset = RouterSnapshot.objects.filter(status=RouterSnapshot.Status.DONE).order_by("-version")
        snapshot.label_from_instance = lambda s: f"v{s.version}" + (f" ({s.label})" if s.label else "")


@pages("playground/", name="playground")
def playground(request: HttpRequest) -> HttpResponse:
    """Ask the router a query (a log-in is needed, as for every write) and show how it was routed and answered.

    Queries count against the same per-minute limit as the API's (429 with Retry-After when it is used up).
    """
    if request.method == "POST" and not request.user.is_authenticated:
        return redirect_to_login(request.get_full_path())
    form = PlaygroundForm(request.POST or None)
    result: service.Answer | None = None
    error = None
    wait = throttling.take_for_user(request.user) if request.method == "POST" else None
    if wait is not None:
        seconds = throttling.retry_after(wait)
        error = {"status": 429, "code": "throttled",
                 "message": f"Too many queries this minute; try again in {seconds} s."}
        response = render(request, "routing/playground.html", {
            "form": form, "error": error, "result": None, "active": selectors.snapshot_active()}, status=429)
        response["Retry-After"] = str(seconds)
        return response
    if request.method == "POST" and form.is_valid():
        data = form.cleaned_data
        snapshot = data["snapshot"]
        try:
            result = service.answer(service.Request(
                query=data["query"], endpoint=RoutingDecision.Endpoint.PLAYGROUND, strategy=data["strategy"],
                samples=data["samples"], temperature=data["temperature"], task_type=data["task_type"] or None,
                snapshot_id=snapshot.pk if snapshot is not None else None, max_tokens=data["max_tokens"],
                user=request.user,
            ))
        except ValidationError as exc:
            add_service_error(form, exc)
        except ServingError as exc:
            error = {"status": exc.status, "code": exc.code, "message": exc.message}
    return render(request, "routing/playground.html", {
        "form": form, "error": error, "result": _shape(result, request) if result is not None else None,
        "active": selectors.snapshot_active(),
    })


def _shape(answer: service.Answer, request: HttpRequest) -> dict[str, Any]:
    """What the page shows of an answer: the decision, skip reasons, the votes and their chart, the samples."""
    decision, route = answer.decision, answer.decision.route
    candidates = []
    for c in decision.candidates:
        if c.skipped:
            outcome = f"skipped: {c.skipped}"
        elif c.failed:
            outcome = f"failed: {c.failed}"
        else:
            outcome = "answered" if c.model == answer.model else ""
        candidates.append({"model": c.model, "score": c.score, "rank": c.rank, "in_team": c.in_team,
                           "outcome": outcome, "passed_over": bool(c.skipped or c.failed),
                           "chosen": c.model == answer.model})
    counted = [(key, n) for key, n in answer.vote.tally if n]
    total_votes = sum(n for _, n in counted)
    votes = [{"answer": key, "votes": n, "share": 100 * n / total_votes} for key, n in counted]
    winner = votes[0]["answer"] if votes else answer.answer
    samples = [{"model": s.model, "index": s.index, "answer": s.answer, "key": s.key, "text": s.text,
                "finish_reason": s.finish_reason, "won": winner is not None and winner in (s.key, s.answer)}
               for s in answer.samples]
    chart = None
    if len(votes) > 0:
        # The axis runs to the number of samples, so that a lone vote out of ten looks like one.
        chart = {"labels": [str(v["answer"]) for v in votes], "values": [v["votes"] for v in votes], "digits": 0,
                 "horizontal": True, "title": "Votes per answer", "highlight": [str(votes[0]["answer"])],
                 "y_max": max(len(samples), total_votes), "y_title": "votes"}
    admin_url = None
    if request.user.is_staff and answer.id:
        admin_url = reverse("admin:routing_routingdecision_by_request", args=[answer.id])
    # Rounded as POST /api/v1/answer reports them, so that the page and the API show the same figures.
    agreement = round(answer.vote.agreement, 6)
    return {
        "id": answer.id, "answer": answer.answer, "response": answer.response, "model": answer.model,
        "strategy": answer.strategy, "fallback": answer.fallback, "failures": answer.failures,
        "usage": {"prompt_tokens": answer.prompt_tokens, "completion_tokens": answer.completion_tokens},
        "agreement": agreement, "agreement_pct": 100 * agreement, "timings": list(answer.timings_ms.items()),
        "candidates": candidates, "votes": votes, "samples": samples, "vote_chart": chart,
        "vote_chart_height": 70 + 30 * len(votes), "admin_url": admin_url,
        "snapshot": {"id": decision.snapshot.id, "version": decision.snapshot.version},
        "decision": {"cluster": route.cluster, "similarity": round(route.similarity, 6), "category": route.category,
                     "task_type": decision.task_type,
                     "runner_ups": [{"cluster": c, "similarity": round(s, 6)} for c, s in route.runner_ups]},
    }


@pages("traffic/", name="traffic")
def traffic(request: HttpRequest) -> HttpResponse:
    """Requests over time per cluster and per model, routing per category, latency and the latest decisions."""
    range_key = request.GET.get("range", traffic_selectors.DEFAULT_RANGE)
    range_key = range_key if range_key in traffic_selectors.RANGES else traffic_selectors.DEFAULT_RANGE
    choices = traffic_selectors.decision_snapshots()
    requested = request.GET.get("snapshot", "")
    snapshot = next((s for s in choices if str(s.pk) == requested), None)
    window = traffic_selectors.traffic_window(range_key)
    by_cluster = traffic_selectors.traffic_by_cluster(window, snapshot=snapshot)
    by_model = traffic_selectors.traffic_by_model(window, snapshot=snapshot)
    by_category = traffic_selectors.routing_by_category(window, snapshot=snapshot)
    colours = _model_colours(by_category.models + [s.label for s in by_model.series])
    return render(request, "routing/traffic.html", {
        "ranges": list(traffic_selectors.RANGES.values()), "range": window.range, "window": window,
        "choices": choices, "snapshot": snapshot, "any_decisions": traffic_selectors.decisions_exist(),
        "summary": traffic_selectors.traffic_summary(window, snapshot=snapshot),
        "by_category": by_category, "category_rows": [
            (row, [(m, row.counts.get(m, 0), row.share(m), colours[m]) for m in by_category.models])
            for row in by_category.rows
        ],
        "cluster_chart": _time_chart(by_cluster, "Requests per cluster", cluster_colours=True, colours=colours),
        "model_chart": _time_chart(by_model, "Requests per answering model", colours=colours),
        "category_chart": _category_chart(by_category, colours) if by_category.rows else None,
        "category_height": 90 + 36 * len(by_category.rows),
        "latest": traffic_selectors.decisions_latest(snapshot=snapshot),
    })


def _model_colours(names: list[str]) -> dict[str, str]:
    colours = {traffic_selectors.OTHER: GREY, traffic_selectors.NO_ANSWER: FAILED, traffic_selectors.NOT_ROUTED: FAILED}
    for name in names:
        if name not in colours:
            colours[name] = MODEL_COLOURS[(len(colours) - 3) % len(MODEL_COLOURS)]
    return colours


def _time_chart(data: traffic_selectors.TimeSeries, title: str, *, colours: dict[str, str],
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


def _category_chart(data: traffic_selectors.CategoryRouting, colours: dict[str, str]) -> dict[str, Any]:
    return {
        "labels": [f"{row.category} ({row.total})" for row in data.rows],
        "series": [{"label": m, "values": [round(100 * v, 2) for v in shares], "colour": colours[m]}
                   for m, shares in zip(data.models, data.shares())],
        "title": "Which model answers each category (share of its answered requests, %)",
    }
