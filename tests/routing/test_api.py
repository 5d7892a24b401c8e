"""The calibration API on the demo sample of real records: snapshots, clusters, profiles, held-out results,
activation, add-model, add-dataset and embedding jobs; and the calibrate command."""
from __future__ import annotations

from io import StringIO
from pathlib import Path

import pytest
from django.conf import settings
from django.core.management import CommandError, call_command

from avengers_web.service_errors import ServiceError
from evaluation.models import Dataset, LanguageModel, ModelResponse, Query, QueryEmbedding
from evaluation.services import dataset_import_file
from routing import building, embedding_jobs, services
from routing.models import EmbeddingJob, RouterSnapshot, SnapshotActivation

pytestmark = pytest.mark.django_db


@pytest.fixture
def sample(sample_records: Path) -> Path:
    dataset_import_file(data=sample_records.read_bytes(), filename=sample_records.name)
    return sample_records


def built(response_json: dict) -> RouterSnapshot:  # type: ignore[type-arg]
    """Build a snapshot the API created (its Celery task is not run by tests that roll back)."""
    assert building.snapshot_build(snapshot_id=response_json["id"]) == "built"
    return RouterSnapshot.objects.get(pk=response_json["id"])


def test_snapshots_are_built_read_activated_and_derived_through_the_api(api, sample) -> None:  # type: ignore[no-untyped-def]
    names = sorted(LanguageModel.objects.values_list("name", flat=True))
    keep = [n for n in names if n != "gemma-2-9b-it"]
    datasets = [d for d in Dataset.objects.values_list("name", flat=True) if d != "mbpp"]
    response = api.post("/api/v1/snapshots", {"datasets": datasets, "models": keep, "k": 6, "shrinkage": "8",
                                              "team_size": 3, "label": "first"}, format="json")
    assert response.status_code == 201, response.json()
    assert (response.json()["status"], response.json()["version"], response.json()["k"]) == ("pending", 1, 6)
    snapshot = built(response.json())

    detail = api.get(f"/api/v1/snapshots/{snapshot.pk}").json()
    assert detail["status"] == "done" and len(detail["team"]) == 3 and detail["shrinkage"] == 8.0
    # The router it routes with, chosen by CV among the default candidates, with the CV table.
    assert detail["router"] == "auto" and detail["router_params"] == {}
    tried = [entry["label"] for entry in detail["router_cv"]]
    assert len(tried) == 5 and tried[0] == "dataset(k=6, shrinkage=inf)" and detail["router_chosen"]["label"] in tried
    assert all(len(entry["folds"]) == 5 for entry in detail["router_cv"])
    assert detail["pool"] == keep and detail["n_train"] == Query.objects.filter(split="train").exclude(
        dataset__name="mbpp").count()
    assert api.get("/api/v1/snapshots").json()["count"] == 1

    clusters = api.get(f"/api/v1/snapshots/{snapshot.pk}/clusters").json()
    assert len(clusters) == 6 and sum(c["size"] for c in clusters) == detail["n_train"]
    for cluster in clusters:
        ranks = [entry["rank"] for entry in cluster["leaderboard"]]
        assert len(ranks) == len(keep) and ranks == sorted(ranks) and ranks[0] == 1
    profiles = api.get(f"/api/v1/snapshots/{snapshot.pk}/profiles?model={keep[0]}").json()
    assert profiles["count"] == 6 and {p["model"] for p in profiles["results"]} == {keep[0]}
    heldout = api.get(f"/api/v1/snapshots/{snapshot.pk}/heldout").json()
    assert heldout["test_queries"] > 0 and {"avengers", "best_single", "oracle", "random"} <= set(heldout["methods"])

    activated = api.post(f"/api/v1/snapshots/{snapshot.pk}/activate")
    assert activated.status_code == 200 and activated.json()["is_active"] is True
    assert SnapshotActivation.objects.get().activated_by.username == "ada"

    added = api.post(f"/api/v1/snapshots/{snapshot.pk}/add-model", {"model": "gemma-2-9b-it"}, format="json")
    assert added.status_code == 201 and added.json()["kind"] == "add_model" and added.json()["parent"] == snapshot.pk
    with_model = built(added.json())
    assert with_model.pool.count() == len(names)
    assert list(with_model.clusters.order_by("index").values_list("size", flat=True)) == \
        list(snapshot.clusters.order_by("index").values_list("size", flat=True))

    embeddings = QueryEmbedding.objects.count()
    grown = api.post(f"/api/v1/snapshots/{with_model.pk}/add-dataset", {"dataset": "mbpp"}, format="json")
    assert grown.status_code == 201 and grown.json()["kind"] == "add_dataset"
    regrown = built(grown.json())
    assert QueryEmbedding.objects.count() - embeddings == Query.objects.filter(dataset__name="mbpp").count()
    assert "mbpp" in regrown.datasets.values_list("name", flat=True)

    again = api.post(f"/api/v1/snapshots/{snapshot.pk}/add-model", {"model": keep[0]}, format="json")
    assert again.status_code == 400 and "already in v1" in again.json()["error"]["fields"]["model"][0]


@pytest.mark.parametrize(("payload", "field"), [
    ({"datasets": ["nope"], "models": ["qwen2.5-7b-instruct"]}, "datasets"),
    ({"datasets": ["gsm8k"], "models": ["ghost"]}, "models"),
    ({"datasets": ["gsm8k"], "models": ["qwen2.5-7b-instruct"], "k": 100000}, "k"),
    ({"datasets": ["gsm8k"], "models": ["qwen2.5-7b-instruct"], "method": "dbscan"}, "method"),
    ({"datasets": ["gsm8k"], "models": ["qwen2.5-7b-instruct"], "embedder": "bag-of-words"}, "embedder"),
    ({"datasets": ["gsm8k"], "models": ["qwen2.5-7b-instruct"], "team": ["mistral-7b-instruct-v0.3"]}, "team"),
    ({"datasets": ["gsm8k"], "models": ["qwen2.5-7b-instruct"], "router": "oracle"}, "router"),
    ({"datasets": ["gsm8k"], "models": ["qwen2.5-7b-instruct"], "router": "dataset",
      "router_params": {"shrinkage": "lots"}}, "router_params"),
    ({"datasets": ["gsm8k"], "models": ["qwen2.5-7b-instruct"], "router_params": "shrinkage=4"}, "router_params"),
])
def test_a_bad_snapshot_request_names_the_field_and_creates_nothing(api, sample, payload, field) -> None:  # type: ignore[no-untyped-def]
    response = api.post("/api/v1/snapshots", {"k": 2, **payload}, format="json")
    assert response.status_code == 400 and field in response.json()["error"]["fields"]
    assert not RouterSnapshot.objects.exists()


def test_an_embedding_job_embeds_only_what_is_missing_and_reports_progress(api, sample) -> None:  # type: ignore[no-untyped-def]
    response = api.post("/api/v1/embedding-jobs", {"datasets": ["gsm8k", "math"]}, format="json")
    assert response.status_code == 201 and response.json()["status"] == "pending"
    job_id = response.json()["id"]
    embedding_jobs.embedding_job_run(job_id=job_id)
    job = api.get(f"/api/v1/embedding-jobs/{job_id}").json()
    expected = Query.objects.filter(dataset__name__in=["gsm8k", "math"]).count()
    assert job["status"] == "done" and job["done"] == job["total"] == expected
    assert job["embedder"] == settings.EMBEDDER  # none named: the platform's default
    assert QueryEmbedding.objects.filter(embedder=settings.EMBEDDER).count() == expected
    second = embedding_jobs.embedding_job_create(datasets=list(Dataset.objects.filter(name="gsm8k")),
                                                 embedder=settings.EMBEDDER, queue=False)
    embedding_jobs.embedding_job_run(job_id=second.pk)
    second.refresh_from_db()
    assert second.total == 0 and "0 queries embedded" in second.message
    assert api.post("/api/v1/embedding-jobs", {"datasets": ["gsm8k"], "embedder": "nope"},
                    format="json").status_code == 400
    assert EmbeddingJob.objects.count() == 2


def test_the_calibrate_command_builds_activates_and_explains_mistakes(sample) -> None:  # type: ignore[no-untyped-def]
    out = StringIO()
    call_command("calibrate", "build", "--datasets", "gsm8k,math,mmlu", "--models",
                 "qwen2.5-7b-instruct,llama-3.1-8b-instruct,gemma-2-9b-it", "--k", "4", "--shrinkage", "0",
                 "--activate", stdout=out)
    snapshot = RouterSnapshot.objects.get()
    assert snapshot.is_active and snapshot.status == "done"
    text = out.getvalue()
    assert f"v{snapshot.version}: " in text and "held-out (in-distribution): avengers" in text
    assert "is now the active snapshot" in text
    with pytest.raises(CommandError, match="there is no model 'ghost'"):
        call_command("calibrate", "add-model", str(snapshot.version), "ghost", stdout=StringIO())
    with pytest.raises(CommandError, match="there is no snapshot v9"):
        call_command("calibrate", "activate", "9", stdout=StringIO())
    # A named router with a parameter: recorded as set, and what the snapshot routes with.
    call_command("calibrate", "build", "--datasets", "gsm8k,math,mmlu", "--models",
                 "qwen2.5-7b-instruct,llama-3.1-8b-instruct,gemma-2-9b-it", "--k", "4", "--router", "dataset",
                 "--set", "shrinkage=16", stdout=StringIO())
    named = RouterSnapshot.objects.order_by("-version").first()
    assert (named.router, named.router_params, named.router_cv) == ("dataset", {"shrinkage": 16}, [])
    assert named.router_chosen["label"] == "dataset(k=4, shrinkage=16)"
    with pytest.raises(CommandError, match="router_params: shrinkage must be a number"):
        call_command("calibrate", "build", "--datasets", "gsm8k", "--models", "gemma-2-9b-it", "--router", "dataset",
                     "--set", "shrinkage=many", stdout=StringIO())
    with pytest.raises(CommandError, match="k: K=1000"):
        call_command("calibrate", "build", "--datasets", "gsm8k", "--models", "gemma-2-9b-it", "--k", "1000",
                     stdout=StringIO())
    assert ModelResponse.objects.filter(source="generated").count() == 0


def test_snapshots_are_started_and_derived_from_the_dashboard(client, user, sample) -> None:  # type: ignore[no-untyped-def]
    assert client.get("/snapshots/new/").status_code == 403  # a viewer may not build snapshots
    client.force_login(user)
    gsm8k, math = Dataset.objects.get(name="gsm8k"), Dataset.objects.get(name="math")
    models = list(LanguageModel.objects.filter(name__in=["qwen2.5-7b-instruct", "llama-3.1-8b-instruct"]))
    bad = client.post("/snapshots/new/", {"datasets": [gsm8k.pk], "models": [m.pk for m in models], "k": 5000,
                                          "method": "kmeans", "embedder": "minilm", "seed": 42, "shrinkage": "auto"})
    assert bad.status_code == 200 and "K=5000 is more than" in bad.content.decode()
    assert not RouterSnapshot.objects.exists()
    response = client.post("/snapshots/new/", {"datasets": [gsm8k.pk], "models": [m.pk for m in models], "k": 3,
                                               "method": "kmeans", "embedder": "minilm", "seed": 42, "shrinkage": "0"})
    snapshot = RouterSnapshot.objects.get()
    assert response.status_code == 302 and response["Location"] == f"/snapshots/{snapshot.pk}/"
    assert building.snapshot_build(snapshot_id=snapshot.pk) == "built"
    page = client.get(f"/snapshots/{snapshot.pk}/").content.decode()
    assert 'data-testid="add-model"' in page and "gemma-2-9b-it" in page
    gemma = LanguageModel.objects.get(name="gemma-2-9b-it")
    derived = client.post(f"/snapshots/{snapshot.pk}/derive/", {"model": gemma.pk})
    child = RouterSnapshot.objects.get(parent=snapshot, kind="add_model")
    assert derived["Location"] == f"/snapshots/{child.pk}/" and child.pool.count() == 3
    client.post(f"/snapshots/{snapshot.pk}/derive/", {"dataset": math.pk})
    assert RouterSnapshot.objects.get(parent=snapshot, kind="add_dataset").datasets.count() == 2
    refused = client.post(f"/snapshots/{snapshot.pk}/derive/", {"model": models[0].pk}, follow=True)
    assert "is already in v1" in refused.content.decode()


def test_a_new_model_is_evaluated_by_the_engine_before_its_profile_is_added(sample) -> None:  # type: ignore[no-untyped-def]
    from evaluation.runs import lanes
    from tests.support.fakes import FakeLLMClient

    gsm8k = Dataset.objects.get(name="gsm8k")
    snapshot = services.snapshot_create(datasets=[gsm8k], models=list(LanguageModel.objects.filter(
        name__in=["qwen2.5-7b-instruct", "gemma-2-9b-it"])), k=3, shrinkage=0, queue=False)
    assert building.snapshot_build(snapshot_id=snapshot.pk) == "built"
    snapshot.refresh_from_db()
    with pytest.raises(ServiceError, match="no scores on the snapshot's train queries"):
        services.snapshot_add_model(snapshot=snapshot, model=LanguageModel.objects.create(name="ghost"), queue=False)

    newcomer = LanguageModel.objects.create(name="newcomer", base_url="http://127.0.0.1:9/v1", max_concurrency=4)
    derived = services.snapshot_add_model(snapshot=snapshot, model=newcomer, queue=False)
    (run,) = derived.evaluation_runs.all()
    assert (run.dataset, run.split, list(run.language_models.all())) == (gsm8k, "train", [newcomer])
    assert building.snapshot_build(snapshot_id=derived.pk) == "waiting"
    assert RouterSnapshot.objects.get(pk=derived.pk).status == "evaluating"
    lanes.evaluation_lane_run(run_id=run.pk, model_id=newcomer.pk, client_factory=lambda m: FakeLLMClient())
    assert building.snapshot_build(snapshot_id=derived.pk) == "built"
    train = Query.objects.filter(dataset=gsm8k, split="train").count()
    profile = derived.profiles.filter(model=newcomer)
    assert profile.count() == 3 and sum(profile.values_list("n", flat=True)) == train
    assert ModelResponse.objects.filter(model=newcomer, source="generated").count() == train


def test_embedding_jobs_show_their_progress_on_the_snapshots_page(client, sample) -> None:  # type: ignore[no-untyped-def]
    job = embedding_jobs.embedding_job_create(datasets=list(Dataset.objects.filter(name="gsm8k")),
                                              embedder="minilm", queue=False)
    page = client.get("/snapshots/").content.decode()
    assert 'data-testid="embedding-job"' in page and "starting" in page and 'http-equiv="refresh"' in page
    embedding_jobs.embedding_job_run(job_id=job.pk)
    page = client.get("/snapshots/").content.decode()
    total = Query.objects.filter(dataset__name="gsm8k").count()
    assert f"{total} of {total}" in page and 'http-equiv="refresh"' not in page
