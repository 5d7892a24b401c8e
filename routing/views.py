"""Dashboard pages for router snapshots: list, detail (and comparison), clusters, leaderboards, heatmap, map."""
from __future__ import annotations

import functools
from collections.abc import Collection
from typing import Any

from django import forms
from django.conf import settings
from django.contrib import messages
from django.core.paginator import Paginator
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse

from avengers_web import roles
from avengers_web.errors import found_or_404
from avengers_web.parsing import parse_id
from avengers_web.routes import Routes
from avengers_web.service_errors import ServiceError, add_service_error, object_button, report_action
from evaluation.models import Dataset, LanguageModel
from routing import selectors, services
from routing.core.clustering import CLUSTERING_METHODS
from routing.core.embedding import EMBEDDERS
from routing.core.router import ROUTERS
from routing.models import EmbeddingJob, RouterSnapshot, SnapshotCluster

pages = Routes()

PAGE_SIZE = 25
# Above this many clusters the heatmap's cells are too narrow for their values; colour and the legend remain.
HEATMAP_MAX_LABELLED = 64


def _snapshot_or_404(pk: int) -> RouterSnapshot:
    return found_or_404(selectors.snapshot_get(pk), "No such snapshot")


def _cluster_or_404(snapshot: RouterSnapshot, index: int) -> SnapshotCluster:
    return found_or_404(selectors.cluster_get(snapshot, index), "No such cluster")


def _sort(request: HttpRequest, keys: Collection[str], default: str) -> str:
    """The ``?sort=`` of the page when it names a column ("-" reverses), else the default."""
    sort = request.GET.get("sort", default)
    return sort if sort.lstrip("-") in keys else default


def _follow(snapshot: RouterSnapshot) -> bool:
    return not snapshot.is_finished


@pages("snapshots/", name="snapshot-list")
def snapshot_list(request: HttpRequest) -> HttpResponse:
    page = Paginator(selectors.snapshot_list(), PAGE_SIZE).get_page(request.GET.get("page"))
    rows = [(s, selectors.heldout_in_distribution(s)) for s in page]
    jobs = list(EmbeddingJob.objects.prefetch_related("datasets").order_by("-created_at")[:5])
    return render(request, "routing/snapshot_list.html", {
        "page": page, "rows": rows, "follow": any(_follow(s) for s in page), "jobs": jobs,
        "jobs_running": any(not job.is_finished for job in jobs),
    })


@pages("snapshots/<int:pk>/", name="snapshot-detail")
def snapshot_detail(request: HttpRequest, pk: int) -> HttpResponse:
    snapshot = _snapshot_or_404(pk)
    comparison = None
    compare = parse_id(request.GET.get("compare", ""))
    if compare is not None and compare != snapshot.pk:
        other = found_or_404(selectors.snapshot_get(compare), "No such snapshot to compare with")
        comparison = selectors.snapshot_compare(snapshot, other)
    heldout = selectors.snapshot_heldout(snapshot)
    return render(request, "routing/snapshot_detail.html", {
        "snapshot": snapshot, "team": selectors.snapshot_team(snapshot),
        "ranked": selectors.snapshot_rank_scores(snapshot), "pool": selectors.snapshot_pool(snapshot),
        "heldout": heldout, "heldout_chart": _heldout_chart(heldout),
        "shrinkage_cv": selectors.snapshot_shrinkage_cv(snapshot),
        "router_cv": selectors.snapshot_router_cv(snapshot),
        "router_label": selectors.router_label(snapshot),
        "activations": selectors.snapshot_activations(snapshot), "comparison": comparison,
        "choices": [s for s in selectors.snapshot_choices() if s.pk != snapshot.pk],
        "follow": _follow(snapshot),
        "can_activate": roles.may(request.user, roles.ACTIVATE_SNAPSHOT, snapshot),
        "models_to_add": LanguageModel.objects.exclude(snapshots=snapshot).order_by("name"),
        "datasets_to_add": Dataset.objects.exclude(snapshots=snapshot).order_by("name"),
    })


def _heldout_chart(heldout: selectors.HeldoutTable) -> dict[str, Any] | None:
    """The in-distribution accuracy of every method, for the bar chart beside the table."""
    row = next((r for r in heldout.rows if r.kind == "in_distribution"), None)
    if row is None or all(v is None for v in row.values):
        return None
    return {"labels": [label for _, label in heldout.methods], "values": row.values, "digits": 1, "y_max": 100,
            "horizontal": True, "title": "In-distribution accuracy on the test split", "y_title": "accuracy (%)"}


@pages("snapshots/<int:pk>/activate/", name="snapshot-activate", role=roles.ACTIVATE_SNAPSHOT, post_only=True)
def snapshot_activate(request: HttpRequest, pk: int) -> HttpResponse:
    snapshot = _snapshot_or_404(pk)
    return object_button(request, snapshot, roles.ACTIVATE_SNAPSHOT,
                         lambda target: services.snapshot_activate(snapshot=target, user=request.user),
                         refused=f"Could not activate {snapshot}", back="snapshot-detail",
                         done=lambda _: f"{snapshot} is now the active router.")


@pages("snapshots/<int:pk>/clusters/", name="snapshot-clusters")
def snapshot_clusters(request: HttpRequest, pk: int) -> HttpResponse:
    snapshot = _snapshot_or_404(pk)
    sort = _sort(request, selectors.CLUSTER_SORTS, "index")
    return render(request, "routing/snapshot_clusters.html", {
        "snapshot": snapshot, "clusters": selectors.snapshot_clusters(snapshot, sort=sort), "sort": sort,
    })


@pages("snapshots/<int:pk>/clusters/<int:index>/", name="cluster-detail")
def cluster_detail(request: HttpRequest, pk: int, index: int) -> HttpResponse:
    snapshot = _snapshot_or_404(pk)
    cluster = _cluster_or_404(snapshot, index)
    sort = _sort(request, selectors.LEADERBOARD_SORTS, "rank")
    leaderboard = selectors.cluster_leaderboard(snapshot, index, sort=sort)
    return render(request, "routing/cluster_detail.html", {
        "snapshot": snapshot, "cluster": cluster, "datasets": selectors.cluster_datasets(cluster),
        "samples": selectors.cluster_sample_queries(snapshot, index),
        "leaderboard": leaderboard, "sort": sort, "best": min(leaderboard, key=lambda r: r.rank, default=None),
        "prev_index": index - 1 if index > 0 else None, "next_index": index + 1 if index + 1 < snapshot.k else None,
    })


@pages("snapshots/<int:pk>/heatmap/", name="snapshot-heatmap")
def snapshot_heatmap(request: HttpRequest, pk: int) -> HttpResponse:
    snapshot = _snapshot_or_404(pk)
    heatmap = selectors.snapshot_heatmap(snapshot)
    return render(request, "routing/snapshot_heatmap.html", {
        "snapshot": snapshot, "heatmap": heatmap, "labelled": len(heatmap.clusters) <= HEATMAP_MAX_LABELLED,
        "legend": [i / 10 for i in range(11)],
    })


@pages("snapshots/<int:pk>/map/", name="snapshot-map")
def snapshot_map(request: HttpRequest, pk: int) -> HttpResponse:
    snapshot = _snapshot_or_404(pk)
    data = selectors.snapshot_map(snapshot)
    chart = {
        "points": [[round(x, 5), round(y, 5), c] for x, y, c in data.points],
        "centroids": [[round(x, 5), round(y, 5), c] for x, y, c, _ in data.centroids],
        "cluster_url": reverse("cluster-detail", args=[snapshot.pk, 0]).removesuffix("0/") + "{index}/",
    }
    clusters = [(c, size, data.shown_per_cluster.get(c, 0)) for _, _, c, size in data.centroids]
    return render(request, "routing/snapshot_map.html", {
        "snapshot": snapshot, "map": data, "chart": chart, "clusters": clusters,
    })


def model_profile_context(request: HttpRequest, model: LanguageModel) -> dict[str, Any]:
    """The "Routing profile" of the model page: the active snapshot's, or that of ``?snapshot=<id>``."""
    requested = request.GET.get("snapshot", "")
    requested_id = parse_id(requested)
    snapshot = selectors.snapshot_get(requested_id) if requested_id is not None else selectors.snapshot_active()
    profile = selectors.model_profile(model, snapshot) if snapshot is not None else None
    chart = None
    if profile is not None:
        chart = {"labels": [str(b.cluster) for b in profile.bars], "values": [b.mean for b in profile.bars],
                 "title": f"{model.name}: mean score per cluster in v{snapshot.version}", "digits": 2, "y_max": 1,
                 "note": "clusters in similarity order; orange: the clusters where it ranks first",
                 "x_title": "cluster", "y_title": "mean score",
                 "links": [reverse("cluster-detail", args=[snapshot.pk, b.cluster]) for b in profile.bars],
                 "highlight": profile.first_places}
    return {
        "routing_snapshot": snapshot, "routing_profile": profile, "routing_chart": chart,
        "routing_choices": selectors.snapshot_choices(), "routing_requested": requested,
    }


class SnapshotForm(forms.Form):
    datasets = forms.ModelMultipleChoiceField(queryset=Dataset.objects.order_by("name"),
                                              widget=forms.SelectMultiple(attrs={"size": 8}))
    models = forms.ModelMultipleChoiceField(queryset=LanguageModel.objects.order_by("name"), label="Pool of models",
                                            widget=forms.SelectMultiple(attrs={"size": 8}))
    k = forms.IntegerField(label="K (clusters)", min_value=1, initial=64)
    method = forms.ChoiceField(choices=[(m, m) for m in sorted(CLUSTERING_METHODS)], initial="kmeans")
    embedder = forms.ChoiceField(choices=[(e, e) for e in sorted(EMBEDDERS)], initial=lambda: settings.EMBEDDER)
    seed = forms.IntegerField(initial=42)
    shrinkage = forms.CharField(initial="auto", help_text='"auto" (5-fold CV on train) or pseudo-queries, e.g. 32.')
    team_size = forms.IntegerField(required=False, min_value=1, label="Team size M",
                                   help_text="Top-M models by rank score; empty: the whole pool.")
    team = forms.ModelMultipleChoiceField(queryset=LanguageModel.objects.order_by("name"), required=False,
                                          label="Or choose the team by hand",
                                          widget=forms.SelectMultiple(attrs={"size": 5}))
    router = forms.ChoiceField(
        choices=[("auto", "auto: chosen by 5-fold CV on train")] + [(n, f"{n}: {d.label}") for n, d in ROUTERS.items()],
        initial="auto", required=False,
        help_text="The router the snapshot routes with; a named one uses its default parameters (the API takes "
                  "router_params).")
    label = forms.CharField(required=False, max_length=200)


@pages("snapshots/new/", name="snapshot-create", role=roles.BUILD_SNAPSHOT)
def snapshot_create(request: HttpRequest) -> HttpResponse:
    form = SnapshotForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        data = form.cleaned_data
        try:
            snapshot = services.snapshot_create(
                datasets=list(data["datasets"]), models=list(data["models"]), k=data["k"], method=data["method"],
                embedder=data["embedder"], seed=data["seed"], shrinkage=data["shrinkage"],
                team_size=data["team_size"], team=[m.name for m in data["team"]] or None, label=data["label"],
                user=request.user, router=data["router"] or "auto",
            )
        except ServiceError as exc:
            add_service_error(form, exc)
        else:
            messages.success(request, f"Building {snapshot}; this page follows its progress.")
            return redirect("snapshot-detail", pk=snapshot.pk)
    return render(request, "routing/snapshot_form.html", {"form": form})


@pages("snapshots/<int:pk>/derive/", name="snapshot-derive", role=roles.BUILD_SNAPSHOT, post_only=True)
def snapshot_derive(request: HttpRequest, pk: int) -> HttpResponse:
    """Add a model (same clusters) or a dataset (re-clustered): one action, a new snapshot."""
    snapshot = _snapshot_or_404(pk)
    kind = "model" if request.POST.get("model") else "dataset"
    text = request.POST.get(kind, "")
    chosen_id = parse_id(text)
    chosen: LanguageModel | Dataset | None = None
    if chosen_id is not None:
        chosen = (LanguageModel.objects if kind == "model" else Dataset.objects).filter(pk=chosen_id).first()
    if chosen is None:
        messages.error(request, f"Could not derive from {snapshot}: choose a {kind} from the list ({text!r} is none).")
        return redirect("snapshot-detail", pk=pk)
    if isinstance(chosen, LanguageModel):
        derive = functools.partial(services.snapshot_add_model, snapshot=snapshot, model=chosen, user=request.user)
    else:
        derive = functools.partial(services.snapshot_add_dataset, snapshot=snapshot, dataset=chosen, user=request.user)
    derived = report_action(request, derive, refused=f"Could not derive from {snapshot}",
                            done=lambda new: f"Building {new} ({new.get_kind_display()}).")
    return redirect("snapshot-detail", pk=derived.pk if derived is not None else pk)
