"""The evaluations API: start, validate, follow, cancel, resume, browse samples; templates on datasets and models."""
from __future__ import annotations

import pytest

from evaluation.runs import lanes
from evaluation.models import Dataset, EvaluationRun, LanguageModel, ModelResponse
from tests.support.fakes import FakeLLMClient
from tests.support.math_queries import make_math_dataset

pytestmark = pytest.mark.django_db


@pytest.fixture
def dataset() -> Dataset:
    """arith: "0 + 0?" ... "3 + 3?", the last in the test split."""
    return make_math_dataset(4, name="arith", text="{i} + {i}?", test=1)


@pytest.fixture
def model() -> LanguageModel:
    return LanguageModel.objects.create(name="served", base_url="http://127.0.0.1:9/v1", max_concurrency=2)


def run_inline(run_id: int, client: FakeLLMClient) -> None:
    run = EvaluationRun.objects.get(pk=run_id)
    for run_model in run.run_models.all():
        lanes.evaluation_lane_run(run_id=run.pk, model_id=run_model.model_id, client_factory=lambda m: client)


def test_an_evaluation_is_started_followed_and_its_samples_browsed(api, dataset, model) -> None:  # type: ignore[no-untyped-def]
    response = api.post("/api/v1/evaluations", {"dataset": "arith", "models": ["served"], "samples": 2,
                                                "params": {"temperature": 0.5, "max_tokens": 64}}, format="json")
    assert response.status_code == 201, response.json()
    body = response.json()
    assert (body["status"], body["split"], body["n_queries"], body["models"]) == ("running", "train", 3, ["served"])
    assert body["progress"]["total"] == 6 and body["progress"]["done"] == 0 and body["progress"]["remaining"] == 6
    run_id = body["id"]
    run_inline(run_id, FakeLLMClient(reply=lambda request, i: "\\boxed{2}" if "1 + 1" in str(request.messages) else "7"))

    detail = api.get(f"/api/v1/evaluations/{run_id}").json()
    assert detail["status"] == "done" and detail["finished_at"]
    progress = detail["progress"]
    assert (progress["done"], progress["failed"], progress["remaining"], progress["fraction"]) == (6, 0, 0, 1.0)
    (served,) = progress["models"]
    assert (served["graded"], served["correct"]) == (6, 2) and served["mean_score"] == pytest.approx(1 / 3)
    assert api.get("/api/v1/evaluations").json()["results"][0]["id"] == run_id
    assert api.get("/api/v1/evaluations?status=running").json()["count"] == 0

    samples = api.get(f"/api/v1/evaluations/{run_id}/samples?verdict=correct").json()
    assert samples["count"] == 2
    sample = samples["results"][0]
    assert sample["query_external_id"] == "q1" and sample["extracted"] == "2" and sample["gold"] == "2"
    assert sample["correct"] is True and sample["grade_reason"] and "1 + 1?" in sample["prompt"]
    assert sample["params"]["temperature"] == 0.5 and sample["text"] == "\\boxed{2}"
    assert api.get(f"/api/v1/evaluations/{run_id}/samples?verdict=wrong&search=q2").json()["count"] == 2
    assert api.get(f"/api/v1/evaluations/{run_id}/samples?verdict=maybe").status_code == 400


@pytest.mark.parametrize(("payload", "field", "message"), [
    ({"dataset": "nope", "models": ["served"]}, "dataset", "no dataset named"),
    ({"dataset": "arith", "models": ["ghost"]}, "models", "no model named or numbered ghost"),
    ({"dataset": "arith", "models": []}, "models", ""),
    ({"dataset": "arith", "models": ["served"], "samples": 0}, "samples", ""),
    ({"dataset": "arith", "models": ["served"], "params": {"temperature": "hot"}}, "params", "temperature"),
    ({"dataset": "arith", "models": ["served"], "params": {"n": 4}}, "params", "n: unknown parameter"),
    ({"dataset": "arith", "models": ["offline"]}, "models", "offline model"),
    ({"dataset": "arith", "models": ["served"], "split": "dev"}, "split", ""),
])
def test_a_bad_evaluation_request_is_refused_with_the_field_at_fault(api, dataset, model, payload, field,  # type: ignore[no-untyped-def]
                                                                     message) -> None:
    LanguageModel.objects.create(name="offline")
    response = api.post("/api/v1/evaluations", payload, format="json")
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "invalid" and field in error["fields"]
    assert message in " ".join(error["fields"][field])
    assert not EvaluationRun.objects.exists()


def test_an_evaluation_is_cancelled_and_resumed_through_the_api(api, dataset, model) -> None:  # type: ignore[no-untyped-def]
    run_id = api.post("/api/v1/evaluations", {"dataset": dataset.pk, "models": [str(model.pk)]},
                      format="json").json()["id"]
    cancelled = api.post(f"/api/v1/evaluations/{run_id}/cancel")
    assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"
    again = api.post(f"/api/v1/evaluations/{run_id}/cancel")
    assert again.status_code == 400 and "only a running run" in again.json()["error"]["message"]
    resumed = api.post(f"/api/v1/evaluations/{run_id}/resume")
    assert resumed.status_code == 200 and resumed.json()["status"] == "running"
    assert resumed.json()["progress"]["batches"] == {"pending": 1}
    busy = api.post(f"/api/v1/evaluations/{run_id}/resume")
    assert busy.status_code == 400 and "still running" in busy.json()["error"]["message"]
    run_inline(run_id, FakeLLMClient())
    assert ModelResponse.objects.count() == 3
    assert api.get("/api/v1/evaluations/999999").status_code == 404


def test_prompt_templates_are_set_on_datasets_and_models_and_validated(api, dataset, model) -> None:  # type: ignore[no-untyped-def]
    response = api.patch(f"/api/v1/datasets/{dataset.pk}", {"prompt_templates": {"math": "Q: {query}\nA:"}},
                         format="json")
    assert response.status_code == 200 and response.json()["prompt_templates"] == {"math": "Q: {query}\nA:"}
    bad = api.patch(f"/api/v1/datasets/{dataset.pk}", {"prompt_templates": {"math": "no placeholder"}}, format="json")
    assert bad.status_code == 400 and "{query}" in bad.json()["error"]["fields"]["prompt_templates"][0]
    bad = api.patch(f"/api/v1/models/{model.pk}", {"prompt_templates": {"poetry": "{query}"}}, format="json")
    assert bad.status_code == 400 and "unknown task type" in bad.json()["error"]["fields"]["prompt_templates"][0]
    ok = api.patch(f"/api/v1/models/{model.pk}", {"prompt_templates": {"": "SYSTEM {query}"}}, format="json")
    assert ok.status_code == 200 and ok.json()["prompt_templates"] == {"": "SYSTEM {query}"}
    run_id = api.post("/api/v1/evaluations", {"dataset": "arith", "models": ["served"]}, format="json").json()["id"]
    run_inline(run_id, FakeLLMClient())
    # The model's catch-all template wins over the dataset's maths template.
    assert set(ModelResponse.objects.values_list("prompt", flat=True)) == {f"SYSTEM {i} + {i}?" for i in range(3)}
