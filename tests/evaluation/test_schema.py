"""The schema on real PostgreSQL: pgvector embeddings, one response per model, query and sample, the admin."""
from __future__ import annotations

import numpy as np
import pytest
from django.contrib import admin
from django.db import IntegrityError, transaction
from pgvector.django import CosineDistance

from evaluation.models import Dataset, LanguageModel, ModelResponse, Query, QueryEmbedding

pytestmark = pytest.mark.django_db


def make_queries(n: int) -> list[Query]:
    dataset = Dataset.objects.create(name="d", split_seed=1)
    return [Query.objects.create(dataset=dataset, external_id=str(i), text=f"q{i}", text_hash=str(i), split="train",
                                 split_source="file") for i in range(n)]


def test_embeddings_of_any_dimension_live_in_pgvector_and_rank_by_cosine() -> None:
    queries = make_queries(3)
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(3, 384)).astype(np.float32)
    for query, vector in zip(queries, vectors):
        QueryEmbedding.objects.create(query=query, embedder="minilm", dimensions=384, vector=vector)
    QueryEmbedding.objects.create(query=queries[0], embedder="e5-large", dimensions=1024, vector=np.ones(1024))
    probe = vectors[1] + 0.01
    nearest = (QueryEmbedding.objects.filter(embedder="minilm")
               .order_by(CosineDistance("vector", probe)).values_list("query__external_id", flat=True))
    assert list(nearest)[0] == "1"
    stored = QueryEmbedding.objects.get(query=queries[2], embedder="minilm").vector
    assert np.allclose(stored, vectors[2])
    with pytest.raises(IntegrityError), transaction.atomic():
        QueryEmbedding.objects.create(query=queries[0], embedder="minilm", dimensions=384, vector=vectors[0])


def test_a_model_has_one_response_per_query_and_sample() -> None:
    (query,) = make_queries(1)
    model = LanguageModel.objects.create(name="m")
    ModelResponse.objects.create(model=model, query=query, sample_index=0, source="generated", score=1)
    ModelResponse.objects.create(model=model, query=query, sample_index=1, source="generated", score=0)
    with pytest.raises(IntegrityError), transaction.atomic():
        ModelResponse.objects.create(model=model, query=query, sample_index=1, source="generated")
    with pytest.raises(IntegrityError), transaction.atomic():
        ModelResponse.objects.create(model=model, query=query, sample_index=2, source="generated", score=1.5)


def test_the_api_key_stays_out_of_repr_and_str() -> None:
    model = LanguageModel.objects.create(name="m", api_key="sk-very-secret")
    assert "sk-very-secret" not in repr(model) + str(model)


@pytest.mark.parametrize("model", sorted(admin.site._registry, key=lambda m: m._meta.label), ids=lambda m: m._meta.label)
def test_the_admin_lists_every_table_with_search(admin_client, model) -> None:  # type: ignore[no-untyped-def]
    opts = model._meta
    url = f"/admin/{opts.app_label}/{opts.model_name}/"
    assert admin_client.get(url).status_code == 200
    assert admin_client.get(url + "?q=x").status_code == 200


def test_every_table_of_the_schema_is_in_the_admin() -> None:
    from django.apps import apps

    ours = {m for app in ("evaluation", "routing", "avengers_web") for m in apps.get_app_config(app).get_models()
            if m._meta.managed}  # avengers_web.Platform has no table: it only holds platform-wide permissions
    assert ours and ours <= set(admin.site._registry)
