"""Router snapshots built by hand in the database, with known numbers, for the dashboard's tests."""
from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

import numpy as np

from evaluation.models import Dataset, LanguageModel, Query
from routing.models import RouterSnapshot, SnapshotCluster, SnapshotProfile, SnapshotQuery

DIMENSIONS = 384
METHODS = ("avengers", "avengers_soft", "knn", "best_single", "best_per_dataset", "random", "oracle")


def make_dataset(name: str) -> Dataset:
    dataset, _ = Dataset.objects.get_or_create(name=name, defaults={"split_seed": 1})
    return dataset


def make_model(name: str) -> LanguageModel:
    model, _ = LanguageModel.objects.get_or_create(name=name)  # offline: no endpoint
    return model


def heldout_json(per_dataset: dict[str, dict[str, float]], *, test_queries: int,
                 in_distribution: Sequence[str] | None = None) -> dict[str, Any]:
    """Build the ``heldout`` field from {method: {dataset: accuracy %}}; means over in- and out-of-distribution."""
    methods = {}
    for method, values in per_dataset.items():
        ind = [v for d, v in values.items() if in_distribution is None or d in in_distribution]
        ood = [v for d, v in values.items() if in_distribution is not None and d not in in_distribution]
        methods[method] = {"per_dataset": values, "in_distribution": float(np.mean(ind)) if ind else None,
                           "out_of_distribution": float(np.mean(ood)) if ood else None}
    return {"methods": methods, "test_queries": test_queries}


def build_snapshot(
    *,
    version: int,
    means: dict[str, Sequence[float | None]],
    assignments: Sequence[tuple[str, int]],
    order: Sequence[int] | None = None,
    team_size: int = 2,
    heldout: dict[str, Any] | None = None,
    label: str = "",
    status: str = RouterSnapshot.Status.DONE,
    parent: RouterSnapshot | None = None,
    kind: str = RouterSnapshot.Kind.BUILT,
    embedder: str = "minilm",
    seed: int = 0,
    user: Any = None,
    **fields: Any,
) -> RouterSnapshot:
    """Write a finished snapshot: clusters with random 384-d centroids, one train query per assignment, profiles.

    ``means``: model name -> its mean score in each cluster; the estimate is 0.9 * mean + 0.05, ranks follow
    the estimate (ties by name), rank scores are sums of 1/rank and the team is the ``team_size`` best.
    ``assignments``: one (dataset name, cluster) per train query. ``order``: the similarity order of the clusters.
    """
    rng = np.random.default_rng(seed)
    k = len(next(iter(means.values())))
    models = {name: make_model(name) for name in means}
    datasets = {name: make_dataset(name) for name, _ in assignments}
    snapshot = RouterSnapshot.objects.create(
        version=version, label=label, kind=kind, parent=parent, embedder=embedder, method="kmeans", k=k, seed=seed,
        shrinkage=2.0, shrinkage_cv={"0.0": 58.1, "2.0": 60.4, "8.0": 59.9}, team_size=team_size,
        status=status, n_train=len(assignments), n_test=(heldout or {}).get("test_queries", 0),
        heldout=heldout or {}, created_by=user, **fields,
    )
    snapshot.datasets.set(datasets.values())
    snapshot.pool.set(models.values())

    estimates = {name: [None if m is None else 0.9 * m + 0.05 for m in row] for name, row in means.items()}
    ranks: dict[str, list[int]] = {name: [0] * k for name in means}
    for c in range(k):
        ordered = sorted(means, key=lambda n: (-(estimates[n][c] if estimates[n][c] is not None else -1.0), n))
        for position, name in enumerate(ordered, start=1):
            ranks[name][c] = position
    rank_scores = {name: float(sum(1.0 / r for r in ranks[name])) for name in means}
    team = sorted(means, key=lambda n: (-rank_scores[n], n))[:team_size]
    firsts = {name: [c for c in range(k) if ranks[name][c] == 1] for name in means}
    # What a build computes is written the way the build service writes it: save() refuses it on a snapshot.
    RouterSnapshot.objects.filter(pk=snapshot.pk).update(team=team, rank_scores=rank_scores, first_places=firsts)
    snapshot.team, snapshot.rank_scores, snapshot.first_places = team, rank_scores, firsts

    per_cluster: dict[int, Counter[str]] = {c: Counter() for c in range(k)}
    centres = rng.normal(size=(k, 2)) * 4
    queries = []
    for i, (dataset_name, cluster) in enumerate(assignments):
        query = Query.objects.create(
            dataset=datasets[dataset_name], external_id=f"v{version}-{i}", text=f"Query {i} of {dataset_name} (cluster {cluster})?",
            text_hash=f"v{version}-{i}", gold="1", task_type="qa", split="train", split_source="file",
        )
        per_cluster[cluster][dataset_name] += 1
        x, y = centres[cluster] + rng.normal(scale=0.6, size=2)
        queries.append(SnapshotQuery(snapshot=snapshot, query=query, cluster=cluster, x=float(x), y=float(y)))
    SnapshotQuery.objects.bulk_create(queries)

    order = list(order) if order is not None else list(range(k))
    centroids = rng.normal(size=(k, DIMENSIONS)).astype(np.float32)
    centroids /= np.linalg.norm(centroids, axis=1, keepdims=True)
    SnapshotCluster.objects.bulk_create(
        SnapshotCluster(snapshot=snapshot, index=c, centroid=centroids[c], dimensions=DIMENSIONS,
                        size=sum(per_cluster[c].values()), datasets=dict(per_cluster[c]), order=order.index(c),
                        x=float(centres[c][0]), y=float(centres[c][1]))
        for c in range(k)
    )
    SnapshotProfile.objects.bulk_create(
        SnapshotProfile(snapshot=snapshot, model=models[name], cluster=c, n=per_cluster[c].total(),
                        mean=means[name][c], estimate=estimates[name][c], rank=ranks[name][c])
        for name in means for c in range(k)
    )
    return snapshot


def random_snapshot(*, version: int, k: int, n_queries: int, models: Sequence[str], datasets: Sequence[str],
                    seed: int = 7, **fields: Any) -> RouterSnapshot:
    """A bigger snapshot with random (seeded) means and assignments."""
    rng = np.random.default_rng(seed)
    means = {name: [round(float(v), 3) for v in rng.uniform(0.05, 0.95, size=k)] for name in models}
    assignments = [(datasets[int(rng.integers(len(datasets)))], int(rng.integers(k))) for _ in range(n_queries)]
    order = [int(c) for c in rng.permutation(k)]
    return build_snapshot(version=version, means=means, assignments=assignments, order=order, seed=seed, **fields)
