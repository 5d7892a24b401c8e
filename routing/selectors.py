"""Read-only queries for router snapshots: lists, held-out tables, clusters, leaderboards, heatmap, map, profiles."""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from django.db.models import CharField, Count, Prefetch, QuerySet
from django.db.models.functions import MD5, Cast

from evaluation.models import Dataset, LanguageModel
from routing.models import (
    EmbeddingJob,
    RouterSnapshot,
    SnapshotActivation,
    SnapshotCluster,
    SnapshotProfile,
    SnapshotQuery,
)

# The held-out methods in the order the tables show them, with the names people read.
HELDOUT_METHODS: tuple[tuple[str, str], ...] = (
    ("avengers", "Avengers"),
    ("paper", "Paper (cluster means)"),
    ("soft", "Soft clusters"),
    ("avengers_soft", "Avengers (soft)"),
    ("knn", "kNN"),
    ("best_single", "Best single"),
    ("best_per_dataset", "Best per dataset"),
    ("random", "Random"),
    ("oracle", "Oracle"),
)
MAP_MAX_POINTS = 5000
SAMPLE_QUERIES = 10


# ---------------------------------------------------------------------------------------------- snapshots


def snapshot_list() -> QuerySet[RouterSnapshot]:
    return (
        RouterSnapshot.objects.select_related("parent", "created_by")
        .prefetch_related(Prefetch("datasets", queryset=Dataset.objects.order_by("name")))
        .annotate(pool_size=Count("pool", distinct=True))
        .order_by("-version")
    )


def snapshot_get(pk: int) -> RouterSnapshot | None:
    return snapshot_list().filter(pk=pk).first()


def embedding_job_get(pk: int) -> EmbeddingJob | None:
    return EmbeddingJob.objects.prefetch_related("datasets").filter(pk=pk).first()


def snapshot_active() -> RouterSnapshot | None:
    return snapshot_list().filter(is_active=True).first()


def snapshot_choices() -> list[RouterSnapshot]:
    """The finished snapshots, newest first, for "compare with" and "profile in" selectors."""
    return list(RouterSnapshot.objects.filter(status=RouterSnapshot.Status.DONE).order_by("-version"))


def snapshot_pool(snapshot: RouterSnapshot) -> list[LanguageModel]:
    return list(snapshot.pool.order_by("name"))


def snapshot_activations(snapshot: RouterSnapshot) -> list[SnapshotActivation]:
    return list(snapshot.activations.select_related("activated_by").order_by("-activated_at", "-id"))


def heldout_in_distribution(snapshot: RouterSnapshot, method: str = "avengers") -> float | None:
    """The held-out in-distribution accuracy (%) of one method, or None before it was measured."""
    report = ((snapshot.heldout or {}).get("methods") or {}).get(method) or {}
    value = report.get("in_distribution")
    return float(value) if value is not None else None


@dataclass(frozen=True)
class TeamMember:
    position: int
    name: str
    model_id: int | None
    rank_score: float | None
    first_places: list[int]


def snapshot_team(snapshot: RouterSnapshot) -> list[TeamMember]:
    """The team, best first, with each model's rank score and the clusters where it ranks first."""
    ids = dict(LanguageModel.objects.filter(name__in=snapshot.team).values_list("name", "id"))
    scores = snapshot.rank_scores or {}
    firsts = snapshot.first_places or {}
    return [
        TeamMember(position=i, name=name, model_id=ids.get(name), rank_score=scores.get(name),
                   first_places=sorted(int(c) for c in firsts.get(name, [])))
        for i, name in enumerate(snapshot.team, start=1)
    ]


@dataclass(frozen=True)
class RankedModel:
    name: str
    model_id: int | None
    rank_score: float | None
    first_places: list[int]
    in_team: bool


def snapshot_rank_scores(snapshot: RouterSnapshot) -> list[RankedModel]:
    """Every profiled model by rank score (highest first), marking the team."""
    ids = dict(snapshot.pool.values_list("name", "id"))
    scores = snapshot.rank_scores or {}
    firsts = snapshot.first_places or {}
    names = sorted(set(ids) | set(scores), key=lambda n: (-(scores.get(n) or 0.0), n))
    team = set(snapshot.team)
    return [RankedModel(name=n, model_id=ids.get(n), rank_score=scores.get(n),
                        first_places=sorted(int(c) for c in firsts.get(n, [])), in_team=n in team) for n in names]


# ---------------------------------------------------------------------------------------------- held-out results


@dataclass(frozen=True)
class HeldoutRow:
    label: str
    kind: str  # "dataset", "in_distribution" or "out_of_distribution"
    values: list[float | None]


@dataclass(frozen=True)
class HeldoutTable:
    methods: list[tuple[str, str]]
    rows: list[HeldoutRow]
    test_queries: int | None

    @property
    def is_empty(self) -> bool:
        return not self.rows


def snapshot_heldout(snapshot: RouterSnapshot) -> HeldoutTable:
    """Rows: each test dataset, then the in- and out-of-distribution means; columns: the methods (accuracy, %)."""
    heldout = snapshot.heldout or {}
    reports: dict[str, dict[str, Any]] = heldout.get("methods") or {}
    methods = [(key, label) for key, label in HELDOUT_METHODS if key in reports]
    methods += [(key, key) for key in sorted(reports) if key not in dict(HELDOUT_METHODS)]
    if not methods:
        return HeldoutTable(methods=[], rows=[], test_queries=heldout.get("test_queries"))
    datasets = sorted({name for key, _ in methods for name in (reports[key].get("per_dataset") or {})})
    rows = [HeldoutRow(name, "dataset", [(reports[key].get("per_dataset") or {}).get(name) for key, _ in methods])
            for name in datasets]
    rows.append(HeldoutRow("In-distribution mean", "in_distribution",
                           [reports[key].get("in_distribution") for key, _ in methods]))
    rows.append(HeldoutRow("Out-of-distribution mean", "out_of_distribution",
                           [reports[key].get("out_of_distribution") for key, _ in methods]))
    return HeldoutTable(methods=methods, rows=rows, test_queries=heldout.get("test_queries"))


# ---------------------------------------------------------------------------------------------- comparison


@dataclass(frozen=True)
class ComparedValue:
    this: float | None
    other: float | None

    @property
    def difference(self) -> float | None:
        if self.this is None or self.other is None:
            return None
        return self.this - self.other


@dataclass(frozen=True)
class ComparedRow:
    label: str
    kind: str
    cells: list[ComparedValue]


@dataclass(frozen=True)
class ConfigRow:
    label: str
    this: str
    other: str

    @property
    def differs(self) -> bool:
        return self.this != self.other


@dataclass(frozen=True)
class Comparison:
    other: RouterSnapshot
    config: list[ConfigRow]
    methods: list[tuple[str, str]]
    heldout: list[ComparedRow]


def _config_values(snapshot: RouterSnapshot) -> dict[str, str]:
    shrinkage = "–" if snapshot.shrinkage is None else f"{snapshot.shrinkage:g}"
    return {
        "Kind": snapshot.get_kind_display(),
        "Embedder": snapshot.embedder,
        "Clustering": snapshot.method,
        "K (clusters)": str(snapshot.k),
        "Seed": str(snapshot.seed),
        "Shrinkage": f"{shrinkage} ({snapshot.shrinkage_setting})",
        "Router": router_label(snapshot),
        "Datasets": ", ".join(d.name for d in snapshot.datasets.all()) or "–",
        "Pool": ", ".join(snapshot.pool.order_by("name").values_list("name", flat=True)) or "–",
        "Team": ", ".join(snapshot.team) or "–",
        "Team size": "–" if snapshot.team_size is None else str(snapshot.team_size),
        "Team chosen by hand": "yes" if snapshot.team_chosen_by_hand else "no",
        "Train queries": str(snapshot.n_train),
        "Test queries": str(snapshot.n_test),
    }


def snapshot_compare(snapshot: RouterSnapshot, other: RouterSnapshot) -> Comparison:
    """Put two snapshots' configurations and held-out tables side by side; differences are this minus other."""
    mine, theirs = _config_values(snapshot), _config_values(other)
    config = [ConfigRow(label, mine[label], theirs[label]) for label in mine]
    a, b = snapshot_heldout(snapshot), snapshot_heldout(other)
    keys = [key for key, _ in HELDOUT_METHODS if key in dict(a.methods) or key in dict(b.methods)]
    methods = [(key, dict(HELDOUT_METHODS)[key]) for key in keys]

    def lookup(table: HeldoutTable) -> dict[tuple[str, str], dict[str, float | None]]:
        index = [key for key, _ in table.methods]
        return {(row.kind, row.label): dict(zip(index, row.values)) for row in table.rows}

    va, vb = lookup(a), lookup(b)
    datasets = sorted({label for kind, label in (*va, *vb) if kind == "dataset"})
    order = [("dataset", name) for name in datasets]
    order += [("in_distribution", "In-distribution mean"), ("out_of_distribution", "Out-of-distribution mean")]
    rows = []
    if methods:
        for kind, label in order:
            cells = [ComparedValue(va.get((kind, label), {}).get(key), vb.get((kind, label), {}).get(key))
                     for key in keys]
            rows.append(ComparedRow(label, kind, cells))
    return Comparison(other=other, config=config, methods=methods, heldout=rows)


# ---------------------------------------------------------------------------------------------- clusters


@dataclass(frozen=True)
class ClusterRow:
    index: int
    order: int
    size: int
    top_datasets: list[tuple[str, int]]
    n_datasets: int
    best_model: str | None
    best_model_id: int | None
    best_mean: float | None
    best_estimate: float | None


CLUSTER_SORTS = {"index": "index", "size": "size", "best": "best_mean", "order": "order"}


def _top_datasets(counts: dict[str, int], n: int = 3) -> list[tuple[str, int]]:
    return sorted(((name, int(count)) for name, count in counts.items()), key=lambda item: (-item[1], item[0]))[:n]


def snapshot_clusters(snapshot: RouterSnapshot, *, sort: str = "index") -> list[ClusterRow]:
    """Every cluster with its size, top datasets and best model; sort by index, size, best or order ("-" reverses).

    Size and best score read best largest first, so "size" and "best" sort descending and "-size", "-best" ascending.
    """
    best: dict[int, SnapshotProfile] = {}
    for profile in (SnapshotProfile.objects.filter(snapshot=snapshot, rank=1)
                    .select_related("model").order_by("cluster", "model__name")):
        best.setdefault(profile.cluster, profile)
    rows = []
    for cluster in SnapshotCluster.objects.filter(snapshot=snapshot).defer("centroid").order_by("index"):
        top = best.get(cluster.index)
        rows.append(ClusterRow(
            index=cluster.index, order=cluster.order, size=cluster.size,
            top_datasets=_top_datasets(cluster.datasets or {}), n_datasets=len(cluster.datasets or {}),
            best_model=top.model.name if top else None, best_model_id=top.model_id if top else None,
            best_mean=top.mean if top else None, best_estimate=top.estimate if top else None,
        ))
    key = sort.lstrip("-")
    if key not in CLUSTER_SORTS:
        key, sort = "index", "index"
    return _sorted(rows, CLUSTER_SORTS[key], descending=(key in ("size", "best")) != sort.startswith("-"))


def _sorted(rows: list[Any], attribute: str, *, descending: bool) -> list[Any]:
    """Sort rows by one attribute, ties kept in their current order, with missing values last either way."""
    present = [r for r in rows if getattr(r, attribute) is not None]
    missing = [r for r in rows if getattr(r, attribute) is None]
    # sorted() is stable, also with reverse=True, so ties stay by index (or by rank).
    return sorted(present, key=lambda r: getattr(r, attribute), reverse=descending) + missing


def cluster_get(snapshot: RouterSnapshot, index: int) -> SnapshotCluster | None:
    return SnapshotCluster.objects.filter(snapshot=snapshot, index=index).defer("centroid").first()


def cluster_datasets(cluster: SnapshotCluster) -> list[tuple[str, int, float]]:
    """The datasets a cluster draws from: (name, train queries, share of the cluster), largest first."""
    counts = _top_datasets(cluster.datasets or {}, n=len(cluster.datasets or {}))
    total = sum(count for _, count in counts) or 1
    return [(name, count, count / total) for name, count in counts]


@dataclass(frozen=True)
class SampleQuery:
    query_id: int
    text: str
    dataset: str
    dataset_id: int
    split: str


def cluster_sample_queries(snapshot: RouterSnapshot, index: int, *, limit: int = SAMPLE_QUERIES) -> list[SampleQuery]:
    rows = (SnapshotQuery.objects.filter(snapshot=snapshot, cluster=index)
            .select_related("query__dataset").order_by("query_id")[:limit])
    return [SampleQuery(r.query_id, r.query.text, r.query.dataset.name, r.query.dataset_id, r.query.split)
            for r in rows]


@dataclass(frozen=True)
class LeaderboardRow:
    rank: int
    model: str
    model_id: int
    mean: float | None
    estimate: float | None
    n: int
    in_team: bool


LEADERBOARD_SORTS = ("rank", "model", "mean", "estimate", "n")


def cluster_leaderboard(snapshot: RouterSnapshot, index: int, *, sort: str = "rank") -> list[LeaderboardRow]:
    """The models ranked in one cluster; sort by rank, model, mean, estimate or n ("-" reverses).

    Rank and model read ascending; mean, estimate and n read largest first. Missing values always come last.
    """
    team = set(snapshot.team)
    rows = [LeaderboardRow(p.rank, p.model.name, p.model_id, p.mean, p.estimate, p.n, p.model.name in team)
            for p in SnapshotProfile.objects.filter(snapshot=snapshot, cluster=index).select_related("model")
            .order_by("rank", "model__name")]
    key = sort.lstrip("-")
    if key not in LEADERBOARD_SORTS:
        key, sort = "rank", "rank"
    return _sorted(rows, key, descending=(key in ("mean", "estimate", "n")) != sort.startswith("-"))


# ---------------------------------------------------------------------------------------------- heatmap


@dataclass(frozen=True)
class HeatmapCell:
    cluster: int
    mean: float | None
    rank: int | None


@dataclass(frozen=True)
class HeatmapRow:
    model: str
    model_id: int
    rank_score: float | None
    in_team: bool
    cells: list[HeatmapCell]


@dataclass(frozen=True)
class Heatmap:
    clusters: list[SnapshotCluster]  # in similarity order
    rows: list[HeatmapRow]


def snapshot_heatmap(snapshot: RouterSnapshot) -> Heatmap:
    """Models (by rank score, highest first) x clusters (in similarity order); each cell the model's mean score."""
    clusters = list(SnapshotCluster.objects.filter(snapshot=snapshot).defer("centroid").order_by("order", "index"))
    profiles: dict[int, dict[int, SnapshotProfile]] = defaultdict(dict)
    names: dict[int, str] = {}
    for p in SnapshotProfile.objects.filter(snapshot=snapshot).select_related("model"):
        profiles[p.model_id][p.cluster] = p
        names[p.model_id] = p.model.name
    scores = snapshot.rank_scores or {}
    team = set(snapshot.team)
    order = sorted(names, key=lambda mid: (-(scores.get(names[mid]) or 0.0), names[mid]))
    rows = []
    for mid in order:
        cells = []
        for c in clusters:
            p = profiles[mid].get(c.index)
            cells.append(HeatmapCell(c.index, p.mean if p else None, p.rank if p else None))
        rows.append(HeatmapRow(names[mid], mid, scores.get(names[mid]), names[mid] in team, cells))
    return Heatmap(clusters=clusters, rows=rows)


# ---------------------------------------------------------------------------------------------- map


@dataclass(frozen=True)
class MapData:
    points: list[tuple[float, float, int]]  # (x, y, cluster)
    centroids: list[tuple[float, float, int, int]]  # (x, y, cluster, size)
    total: int
    shown_per_cluster: dict[int, int] = field(default_factory=dict)

    @property
    def downsampled(self) -> bool:
        return len(self.points) < self.total


def snapshot_map(snapshot: RouterSnapshot, *, max_points: int | None = None) -> MapData:
    """The 2-D map: the snapshot's queries (at most ``max_points``, default MAP_MAX_POINTS) and its cluster centroids.

    A big snapshot is thinned to a fixed pseudo-random sample (ordered by a hash of the query id), so the
    same snapshot always draws the same points and every cluster keeps its share.
    """
    max_points = MAP_MAX_POINTS if max_points is None else max_points
    assignments = SnapshotQuery.objects.filter(snapshot=snapshot)
    total = assignments.count()
    if total > max_points:
        assignments = assignments.order_by(MD5(Cast("query_id", output_field=CharField())))[:max_points]
    else:
        assignments = assignments.order_by("query_id")
    points = [(x, y, c) for x, y, c in assignments.values_list("x", "y", "cluster")]
    shown: dict[int, int] = defaultdict(int)
    for _, _, c in points:
        shown[c] += 1
    centroids = [(x, y, i, s) for x, y, i, s in SnapshotCluster.objects.filter(snapshot=snapshot)
                 .order_by("index").values_list("x", "y", "index", "size")]
    return MapData(points=points, centroids=centroids, total=total, shown_per_cluster=dict(shown))


# ---------------------------------------------------------------------------------------------- model profile


@dataclass(frozen=True)
class ProfileBar:
    cluster: int
    size: int
    n: int
    mean: float | None
    estimate: float | None
    rank: int


@dataclass(frozen=True)
class ModelProfile:
    snapshot: RouterSnapshot
    bars: list[ProfileBar]  # in similarity order
    first_places: list[int]
    rank_score: float | None
    in_team: bool
    n_models: int


def model_profile(model: LanguageModel, snapshot: RouterSnapshot) -> ModelProfile | None:
    """A model's mean, estimate and rank in every cluster of a snapshot; None when the snapshot did not profile it."""
    profiles = {p.cluster: p for p in SnapshotProfile.objects.filter(snapshot=snapshot, model=model)}
    if not profiles:
        return None
    bars = []
    for c in SnapshotCluster.objects.filter(snapshot=snapshot).defer("centroid").order_by("order", "index"):
        p = profiles.get(c.index)
        if p is not None:
            bars.append(ProfileBar(c.index, c.size, p.n, p.mean, p.estimate, p.rank))
    n_models = SnapshotProfile.objects.filter(snapshot=snapshot).values("model_id").distinct().count()
    firsts = sorted(int(c) for c in (snapshot.first_places or {}).get(model.name, []))
    if not firsts:
        firsts = sorted(b.cluster for b in bars if b.rank == 1)
    return ModelProfile(snapshot=snapshot, bars=bars, first_places=firsts,
                        rank_score=(snapshot.rank_scores or {}).get(model.name),
                        in_team=model.name in snapshot.team, n_models=n_models)


def router_label(snapshot: RouterSnapshot) -> str:
    """What the snapshot routes with, and how it was chosen: "dataset(shrinkage=inf) (chosen by CV)"."""
    chosen = (snapshot.router_chosen or {}).get("label")
    if not chosen:
        return "cluster profiles (built before routers were chosen)" \
            if snapshot.status == RouterSnapshot.Status.DONE else f"{snapshot.router} (chosen when built)"
    return f"{chosen} ({'chosen by CV' if snapshot.router == 'auto' else 'set'})"


def snapshot_router_cv(snapshot: RouterSnapshot) -> list[tuple[str, float, bool]]:
    """Each candidate's mean CV in-distribution accuracy (%) on train: (label, accuracy, chosen), in order tried."""
    chosen = (snapshot.router_chosen or {}).get("label")
    rows = []
    for entry in snapshot.router_cv if isinstance(snapshot.router_cv, list) else []:
        label, folds = (entry.get("label"), entry.get("folds")) if isinstance(entry, dict) else (None, None)
        if isinstance(folds, list) and folds and all(isinstance(v, (int, float)) for v in folds):
            rows.append((str(label), float(sum(folds) / len(folds)), label == chosen))
    return rows


def snapshot_shrinkage_cv(snapshot: RouterSnapshot) -> list[tuple[float, float, bool]]:
    """The cross-validated in-distribution accuracy (%) of each shrinkage tried: (shrinkage, accuracy, chosen)."""
    rows = []
    for key, value in (snapshot.shrinkage_cv or {}).items():
        try:
            shrinkage = float(key)
        except ValueError:
            continue
        rows.append((shrinkage, float(value), snapshot.shrinkage is not None and shrinkage == snapshot.shrinkage))
    return sorted(rows)
