"""Router snapshots on the real LLMRouter records: the platform's numbers equal the offline evaluator's,
a model added later gives what a build with it from the start gives, and nothing is computed twice."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from django.conf import settings

from avengers_web.service_errors import ServiceError
from evaluation.models import Dataset, LanguageModel, ModelResponse, Query, QueryEmbedding
from evaluation.services import dataset_import_file
from routing import building, services
from routing.models import RouterSnapshot, SnapshotActivation

pytestmark = pytest.mark.django_db
HELD_OUT_MODEL = "gemma-2-9b-it"


@pytest.fixture
def llmrouter(llmrouter_records: Path) -> Path:
    dataset_import_file(data=llmrouter_records.read_bytes(), filename=llmrouter_records.name)
    assert Dataset.objects.count() == 14 and LanguageModel.objects.count() == 9
    return llmrouter_records


def build(**options) -> RouterSnapshot:  # type: ignore[no-untyped-def]
    snapshot = services.snapshot_create(queue=False, **options)
    assert building.snapshot_build(snapshot_id=snapshot.pk) == "built", RouterSnapshot.objects.get(pk=snapshot.pk).message
    snapshot.refresh_from_db()
    return snapshot


def test_a_k64_snapshot_scores_on_the_test_split_what_the_offline_evaluator_scores(llmrouter, api) -> None:  # type: ignore[no-untyped-def]
    from routing.core.heldout import COMPARED, router_candidates, run_protocol
    from routing.offline import default_cache, prepare

    snapshot = build(datasets=list(Dataset.objects.all()), models=list(LanguageModel.objects.all()), k=64, seed=42)
    assert (snapshot.status, snapshot.n_train, snapshot.n_test) == ("done", 5608, 381)
    assert snapshot.clusters.count() == 64 and snapshot.assignments.count() == 5608
    assert snapshot.profiles.count() == 64 * 9 and sum(snapshot.clusters.values_list("size", flat=True)) == 5608

    # The same settings through `python -m routing.offline evaluate`'s own functions, on the file itself.
    assert snapshot.embedder == settings.EMBEDDER  # none named: the platform's default
    models, train, test, _ = prepare(llmrouter, 42, snapshot.embedder, default_cache())
    offline = run_protocol(train, test, models, seed=42, candidates=router_candidates("auto", k=64, method="kmeans"),
                           compare={n: spec.configured(k=64, method="kmeans") for n, spec in COMPARED.items()})
    # The router: chosen among the same candidates with the same CV table, recorded on the snapshot.
    assert snapshot.router == "auto" and snapshot.router_chosen == offline.chosen.jsonable()
    assert [entry["label"] for entry in snapshot.router_cv] == list(offline.cv)  # in the order tried
    for entry in snapshot.router_cv:
        assert np.allclose(entry["folds"], offline.cv[entry["label"]], atol=1e-3), entry["label"]
    assert snapshot.heldout["router"] == offline.chosen.label
    ours = snapshot.heldout["methods"]
    assert set(ours) == set(offline.reports) == {"avengers", "paper", "soft", "knn", "best_single",
                                                 "best_per_dataset", "random", "oracle"}
    for method, report in offline.reports.items():
        assert abs(ours[method]["in_distribution"] - report.in_distribution) < 0.1, method
        assert set(ours[method]["per_dataset"]) == set(report.per_dataset)
        for name, value in report.per_dataset.items():
            assert abs(ours[method]["per_dataset"][name] - value) < 0.1, (method, name)
    assert ours["oracle"]["in_distribution"] > ours["avengers"]["in_distribution"] > ours["random"]["in_distribution"]
    assert ours["avengers"]["in_distribution"] > ours["best_single"]["in_distribution"]

    # Live routing uses that router: POST /api/v1/route ranks first, for every test query, the model the
    # offline router picks for it.
    from routing.serving import tables
    from routing.core.router import choose
    from routing.offline import embed_all

    services.snapshot_activate(snapshot=snapshot)
    tables.forget()
    texts = list(Query.objects.filter(split="test").order_by("id").values_list("text", flat=True))
    assert len(texts) == 381
    vectors, _ = embed_all(texts, snapshot.embedder, default_cache())
    expected = [models[i] for i in choose(offline.routers["avengers"], vectors)[:, 0]]
    live = []
    for text in texts:
        response = api.post("/api/v1/route", {"query": text}, format="json")
        assert response.status_code == 200, response.content
        body = response.json()
        assert body["snapshot"]["router"] == offline.chosen.label
        live.append(body["candidates"][0]["model"])
    mismatches = [(t[:60], e, g) for t, e, g in zip(texts, expected, live) if e != g]
    assert not mismatches, mismatches[:5]
    assert len(set(live)) > 1  # the router does route: different queries, different models

    # Team selection by rank score, saved with the snapshot; activation is one action, recorded.
    assert len(snapshot.team) == 9 and snapshot.rank_scores[snapshot.team[0]] == max(snapshot.rank_scores.values())
    other = build(datasets=list(Dataset.objects.all()), models=list(LanguageModel.objects.all()), k=8, seed=42,
                  shrinkage=0, team_size=3)
    assert len(other.team) == 3 and set(other.team) <= set(snapshot.rank_scores)
    services.snapshot_activate(snapshot=snapshot)
    services.snapshot_activate(snapshot=other)
    assert list(RouterSnapshot.objects.filter(is_active=True)) == [other]
    assert SnapshotActivation.objects.count() == 3  # the parity check above activated the first one too


def test_a_model_added_later_gives_the_snapshot_built_with_it_and_computes_nothing_again(llmrouter) -> None:  # type: ignore[no-untyped-def]
    datasets = list(Dataset.objects.all())
    everyone = list(LanguageModel.objects.all())
    without = [m for m in everyone if m.name != HELD_OUT_MODEL]
    full = build(datasets=datasets, models=everyone, k=64, seed=42, shrinkage=32)
    partial = build(datasets=datasets, models=without, k=64, seed=42, shrinkage=32)
    embeddings, responses = QueryEmbedding.objects.count(), ModelResponse.objects.count()

    added = services.snapshot_add_model(snapshot=partial, model=LanguageModel.objects.get(name=HELD_OUT_MODEL),
                                        queue=False)
    assert not added.evaluation_runs.exists()  # its results were already stored
    assert building.snapshot_build(snapshot_id=added.pk) == "built"
    added.refresh_from_db()
    assert (QueryEmbedding.objects.count(), ModelResponse.objects.count()) == (embeddings, responses)
    assert added.kind == "add_model" and added.parent == partial and added.pool.count() == 9

    def clusters(snapshot: RouterSnapshot) -> np.ndarray:
        return np.asarray(list(snapshot.clusters.order_by("index").values_list("centroid", flat=True)))

    assert np.allclose(clusters(added), clusters(full), atol=1e-6)
    assert dict(added.assignments.values_list("query_id", "cluster")) == \
        dict(full.assignments.values_list("query_id", "cluster"))

    def profiles(snapshot: RouterSnapshot) -> dict[tuple[str, int], tuple[int, float | None, int]]:
        return {(m, c): (n, None if mean is None else round(mean, 9), rank) for m, c, n, mean, rank in
                snapshot.profiles.values_list("model__name", "cluster", "n", "mean", "rank")}

    assert profiles(added) == profiles(full)
    assert added.team == full.team and added.rank_scores == pytest.approx(full.rank_scores)
    # The router too: chosen the same way, and what the routing service fits from each routes alike.
    assert added.router == "auto" and added.router_chosen == full.router_chosen and added.router_cv == full.router_cv
    probe = np.asarray(list(QueryEmbedding.objects.filter(query__split="test", embedder=full.embedder)
                            .order_by("query_id").values_list("vector", flat=True)[:50]), dtype=np.float32)
    assert np.allclose(building.snapshot_router(added).model_scores(probe),
                       building.snapshot_router(full).model_scores(probe))


def test_a_model_with_a_few_scores_is_added_from_them_without_evaluating_the_rest(llmrouter) -> None:  # type: ignore[no-untyped-def]
    datasets = list(Dataset.objects.all())
    newcomer = LanguageModel.objects.get(name=HELD_OUT_MODEL)
    base = build(datasets=datasets, models=[m for m in LanguageModel.objects.all() if m != newcomer], k=16, seed=42,
                 shrinkage=8, team_size=3)
    # As if it had been evaluated on three train queries per dataset only, and could be asked for the rest.
    kept = [q for d in datasets for q in Query.objects.filter(dataset=d, split="train").order_by("id")
            .values_list("id", flat=True)[:3]]
    ModelResponse.objects.filter(model=newcomer).exclude(query_id__in=kept).delete()
    LanguageModel.objects.filter(pk=newcomer.pk).update(base_url="http://127.0.0.1:9/v1")
    newcomer.refresh_from_db()
    responses = ModelResponse.objects.count()

    team = [*base.team, newcomer.name]
    added = services.snapshot_add_model(snapshot=base, model=newcomer, queue=False, evaluate_missing=False, team=team)
    assert not added.evaluation_runs.exists()
    assert building.snapshot_build(snapshot_id=added.pk) == "built"
    added.refresh_from_db()
    assert ModelResponse.objects.count() == responses
    assert added.pool.count() == 9 and added.team == team and added.team_chosen_by_hand
    assert added.shrinkage == base.shrinkage == 8
    rows = list(added.profiles.filter(model=newcomer).values_list("n", "estimate"))
    scored = ModelResponse.objects.filter(model=newcomer, score__isnull=False, error="").values("query").distinct()
    assert 0 < sum(n for n, _ in rows) == scored.count() <= len(kept) == 3 * len(datasets)
    # Clusters without its scores lean on its neighbourhood and overall mean instead of having no estimate.
    assert any(n == 0 for n, _ in rows) and all(estimate is not None for _, estimate in rows)

    # The default still evaluates what is missing first: one run per dataset, none of them started here.
    evaluated = services.snapshot_add_model(snapshot=base, model=newcomer, queue=False)
    assert evaluated.evaluation_runs.count() == len(datasets) and evaluated.team == []
    with pytest.raises(ServiceError) as caught:
        services.snapshot_add_model(snapshot=base, model=LanguageModel.objects.create(name="unscored"),
                                    queue=False, evaluate_missing=False)
    assert caught.value.field == "model"


def test_a_dataset_added_later_is_reclustered_and_only_its_queries_are_embedded(llmrouter) -> None:  # type: ignore[no-untyped-def]
    datasets = [d for d in Dataset.objects.all() if d.name != "mbpp"]
    base = build(datasets=datasets, models=list(LanguageModel.objects.all()), k=16, seed=42, shrinkage=32)
    mbpp = Dataset.objects.get(name="mbpp")
    # As if it had just been uploaded (by query ids: a join in a DELETE can get a poor plan on fresh tables).
    mbpp_ids = list(Query.objects.filter(dataset=mbpp).values_list("id", flat=True))
    QueryEmbedding.objects.filter(query_id__in=mbpp_ids).delete()
    before = QueryEmbedding.objects.count()
    responses = ModelResponse.objects.count()
    added = services.snapshot_add_dataset(snapshot=base, dataset=mbpp, queue=False)
    assert building.snapshot_build(snapshot_id=added.pk) == "built"
    added.refresh_from_db()
    new_queries = Query.objects.filter(dataset=mbpp).count()
    assert QueryEmbedding.objects.count() - before == new_queries  # only mbpp's queries were embedded
    assert ModelResponse.objects.count() == responses  # offline models: nothing to evaluate, nothing evaluated
    assert added.n_train == base.n_train + Query.objects.filter(dataset=mbpp, split="train").count()
    assert "mbpp" in set().union(*added.clusters.values_list("datasets", flat=True))
    assert not np.allclose(  # re-clustered: the centroids moved
        np.asarray(list(added.clusters.order_by("index").values_list("centroid", flat=True))),
        np.asarray(list(base.clusters.order_by("index").values_list("centroid", flat=True))))


def test_bad_snapshot_requests_are_refused_and_create_nothing(llmrouter) -> None:  # type: ignore[no-untyped-def]
    datasets, models = list(Dataset.objects.all()), list(LanguageModel.objects.all())
    cases = [
        ({"embedder": "word2vec"}, "embedder"), ({"method": "dbscan"}, "method"), ({"k": 10_000}, "k"),
        ({"shrinkage": "lots"}, "shrinkage"), ({"team": ["nobody"]}, "team"), ({"team_size": 12}, "team_size"),
        ({"datasets": []}, "datasets"), ({"models": []}, "models"), ({"router": "nope"}, "router"),
        ({"router": "dataset", "router_params": {"shrinkage": -1}}, "router_params"),
        ({"router": "dataset", "router_params": {"colour": 1}}, "router_params"),
        ({"router": "dataset", "router_params": {"neighbours": "ten"}}, "router_params"),
        ({"router_params": {"k": 3}}, "router_params"), ({"router": "knn", "router_params": [1]}, "router_params"),
    ]
    for change, field in cases:
        with pytest.raises(ServiceError) as caught:
            services.snapshot_create(**{"datasets": datasets, "models": models, "queue": False, **change})
        assert caught.value.field == field
    assert not RouterSnapshot.objects.exists()
