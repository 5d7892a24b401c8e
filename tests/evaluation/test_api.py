"""The REST API for datasets, imports and models, against the real database."""
from __future__ import annotations

import json

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile

from evaluation.models import Dataset, DatasetImport, LanguageModel, ModelResponse, Query
from evaluation.services import dataset_import_file, dataset_import_create
from tests.support.servers import free_port

pytestmark = pytest.mark.django_db


def upload(api, content: bytes, filename: str = "data.jsonl", **fields):  # type: ignore[no-untyped-def]
    return api.post("/api/v1/datasets", {"file": SimpleUploadedFile(filename, content), **fields}, format="multipart")


def test_uploading_records_creates_datasets_models_and_results(api, sample_records) -> None:  # type: ignore[no-untyped-def]
    response = upload(api, sample_records.read_bytes(), "sample_records.jsonl")
    assert response.status_code == 201, response.json()
    body = response.json()
    assert body["format"] == "jsonl" and body["queries_added"] == Query.objects.count() == 384
    assert len(body["datasets"]) == 14 and len(body["models_created"]) == 9
    assert body["responses_added"] == ModelResponse.objects.count() > 0
    again = upload(api, sample_records.read_bytes(), "sample_records.jsonl").json()
    assert (again["queries_added"], again["responses_added"], again["queries_existing"]) == (0, 0, 384)


def test_uploading_a_csv_without_a_dataset_column_uses_the_name(api) -> None:  # type: ignore[no-untyped-def]
    response = upload(api, b"query,gold\nA?,a\nB?,b\nC?,c\n", "x.csv", name="letters", split_seed=9)
    assert response.status_code == 201
    dataset = Dataset.objects.get(name="letters")
    assert dataset.split_seed == 9 and dataset.queries.count() == 3


@pytest.mark.parametrize(("content", "filename", "line", "needle"), [
    (b'{"query": "a"}\n\xc3\x28', "x.jsonl", 2, "not UTF-8"),
    (b"\x89PNG\r\n", "x.png", 0, "unsupported file type .png"),
    (b"text\nhello\n", "x.csv", 1, "no query column"),
    (b'{"id": 1, "query": "a"}\n{"id": 1, "query": "b"}', "x.jsonl", 2, "repeats line 1"),
    (b'{"query": "a", "scores": {"m": 1.01}}', "x.jsonl", 1, "outside [0, 1]"),
])
def test_bad_uploads_get_400_naming_the_line_and_write_nothing(api, content, filename, line, needle) -> None:  # type: ignore[no-untyped-def]
    response = upload(api, content, filename, name="d")
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "invalid_file" and needle in error["message"] and "file" in error["fields"]
    assert error["problems"][0]["line"] == line and needle in error["problems"][0]["message"]
    assert (Dataset.objects.count(), Query.objects.count(), LanguageModel.objects.count()) == (0, 0, 0)


def test_an_upload_above_the_size_limit_is_refused(api, settings) -> None:  # type: ignore[no-untyped-def]
    settings.MAX_UPLOAD_BYTES = 64
    response = upload(api, b'{"query": "a long enough question to pass the limit of sixty-four bytes"}', name="d")
    assert response.status_code == 400
    assert "above the limit of 64 bytes" in response.json()["error"]["message"]
    assert Query.objects.count() == 0


def test_an_upload_without_a_file_names_the_field(api) -> None:  # type: ignore[no-untyped-def]
    response = api.post("/api/v1/datasets", {"name": "d"}, format="multipart")
    assert response.status_code == 400
    assert list(response.json()["error"]["fields"]) == ["file"]
    response = upload(api, b"query\nq\n", "x.csv", name="no spaces allowed")
    assert response.status_code == 400
    assert list(response.json()["error"]["fields"]) == ["name"] and "not a valid dataset name" in response.json()["error"]["message"]


def test_datasets_are_listed_with_counts_and_paginated(api, sample_records) -> None:  # type: ignore[no-untyped-def]
    dataset_import_file(data=sample_records.read_bytes(), filename="s.jsonl")
    body = api.get("/api/v1/datasets?page_size=5").json()
    assert body["count"] == 14 and len(body["results"]) == 5 and body["next"]
    gsm = next(d for d in api.get("/api/v1/datasets?page_size=100").json()["results"] if d["name"] == "gsm8k")
    assert (gsm["n_queries"], gsm["n_train"], gsm["n_test"]) == (30, 24, 6)
    detail = api.get(f"/api/v1/datasets/{gsm['id']}").json()
    assert detail["stats"]["queries"] == 30 and detail["stats"]["task_types"] == {"math": 30}
    assert len(detail["stats"]["models"]) == 9
    assert api.get("/api/v1/datasets/999999").status_code == 404
    assert api.get("/api/v1/datasets?page=99").status_code == 404


def test_a_datasets_queries_are_browsable_with_filters_and_scores(api, sample_records) -> None:  # type: ignore[no-untyped-def]
    dataset_import_file(data=sample_records.read_bytes(), filename="s.jsonl")
    gsm = Dataset.objects.get(name="gsm8k")
    body = api.get(f"/api/v1/datasets/{gsm.pk}/queries?split=test&page_size=4").json()
    assert body["count"] == 6 and len(body["results"]) == 4
    first = body["results"][0]
    assert first["split"] == "test" and first["gold"] and len(first["scores"]) == 9
    stored = Query.objects.get(pk=first["id"]).responses.get(model__name="qwen2.5-7b-instruct").score
    assert first["scores"]["qwen2.5-7b-instruct"] == stored
    word = first["text"].split()[3]
    assert api.get(f"/api/v1/datasets/{gsm.pk}/queries?search={word}").json()["count"] >= 1
    bad = api.get(f"/api/v1/datasets/{gsm.pk}/queries?split=validation")
    assert bad.status_code == 400 and "split" in bad.json()["error"]["fields"]


def test_an_import_job_reports_its_progress(api, user, django_capture_on_commit_callbacks) -> None:  # type: ignore[no-untyped-def]
    with django_capture_on_commit_callbacks(execute=True):
        job = dataset_import_create(data=b"query\nq1\nq2\n", filename="x.csv", default_name="d", user=user)
    body = api.get(f"/api/v1/imports/{job.pk}").json()
    assert body["status"] == "done" and body["processed_lines"] == body["total_lines"] == 4
    assert body["summary"]["queries_added"] == 2
    assert bytes(DatasetImport.objects.get(pk=job.pk).payload) == b""
    assert api.get("/api/v1/imports/424242").status_code == 404


def test_models_are_registered_listed_edited_and_deactivated(api) -> None:  # type: ignore[no-untyped-def]
    created = api.post("/api/v1/models", {
        "name": "qwen-7b", "base_url": "http://gpu1:8000/v1/", "served_model_id": "Qwen/Qwen2.5-7B-Instruct",
        "api_key": "sk-secret-value", "default_params": {"temperature": 0.7, "max_tokens": 1024},
        "max_concurrency": 16, "cost_input_per_mtok": "0.2", "cost_output_per_mtok": "0.3",
    }, format="json")
    assert created.status_code == 201, created.json()
    body = created.json()
    assert body["base_url"] == "http://gpu1:8000/v1" and body["has_api_key"] is True
    assert "sk-secret-value" not in json.dumps(body) and "api_key" not in body
    model_id = body["id"]
    listed = api.get("/api/v1/models").json()
    assert listed["count"] == 1 and "sk-secret-value" not in json.dumps(listed)
    patched = api.patch(f"/api/v1/models/{model_id}", {"max_concurrency": 4}, format="json").json()
    assert patched["max_concurrency"] == 4 and patched["has_api_key"] is True
    assert LanguageModel.objects.get(pk=model_id).api_key == "sk-secret-value"
    assert api.delete(f"/api/v1/models/{model_id}").status_code == 204
    assert api.get(f"/api/v1/models/{model_id}").json()["is_active"] is False
    assert api.get("/api/v1/models?active=true").json()["count"] == 0
    assert api.patch(f"/api/v1/models/{model_id}", {"is_active": True}, format="json").json()["is_active"] is True


@pytest.mark.parametrize(("payload", "field"), [
    ({"name": "m", "base_url": "not a url"}, "base_url"),
    ({"name": "m", "max_concurrency": 0}, "max_concurrency"),
    ({"name": "m", "default_params": {"temperature": 9}}, "default_params"),
    ({"name": "bad name!"}, "name"),
    ({}, "name"),
    ({"name": "m", "cost_input_per_mtok": -1}, "cost_input_per_mtok"),
])
def test_bad_model_fields_get_400_naming_the_field(api, payload, field) -> None:  # type: ignore[no-untyped-def]
    response = api.post("/api/v1/models", payload, format="json")
    assert response.status_code == 400
    error = response.json()["error"]
    assert field in error["fields"] and error["message"].startswith(field)
    assert LanguageModel.objects.count() == 0


def test_a_duplicate_model_name_is_refused(api) -> None:  # type: ignore[no-untyped-def]
    assert api.post("/api/v1/models", {"name": "m"}, format="json").status_code == 201
    response = api.post("/api/v1/models", {"name": "m"}, format="json")
    assert response.status_code == 400 and "name" in response.json()["error"]["fields"]


def test_test_connection_says_why_a_dead_endpoint_fails(api) -> None:  # type: ignore[no-untyped-def]
    model = LanguageModel.objects.create(name="dead", base_url=f"http://127.0.0.1:{free_port()}/v1")
    body = api.post(f"/api/v1/models/{model.pk}/test-connection").json()
    assert body["ok"] is False and "connection refused" in body["message"]
    model.refresh_from_db()
    assert model.last_check_ok is False and model.last_checked_at is not None
    offline = LanguageModel.objects.create(name="offline")
    assert "offline model" in api.post(f"/api/v1/models/{offline.pk}/test-connection").json()["message"]


@pytest.mark.integration
def test_test_connection_lists_what_a_real_llm_server_serves(api, llm) -> None:  # type: ignore[no-untyped-def]
    created = api.post("/api/v1/models", {"name": "smol", "base_url": llm.base_url, "served_model_id": llm.model},
                       format="json").json()
    body = api.post(f"/api/v1/models/{created['id']}/test-connection").json()
    assert body["ok"] is True and llm.model in body["models"] and body["latency_ms"] > 0
    wrong = api.post("/api/v1/models", {"name": "other", "base_url": llm.base_url, "served_model_id": "gpt-9"},
                     format="json").json()
    body = api.post(f"/api/v1/models/{wrong['id']}/test-connection").json()
    assert body["ok"] is False and "does not serve 'gpt-9'" in body["message"] and llm.model in body["message"]
