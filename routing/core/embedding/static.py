"""``minilm-static``: one vector per token, distilled once from all-MiniLM-L6-v2 (the Model2Vec recipe)."""
from __future__ import annotations

import os
import tempfile
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from routing.core.embedding.minilm import (
    MINILM_DIMENSIONS,
    MiniLMOnnxEmbedder,
    _minilm_version,
    minilm_tokenizer,
)
from routing.core.embedding.registry import Embedder, ProgressCallback, _batches, _check_positive
from routing.core.embedding.registry import default_onnx_dir, normalise_rows, register_embedder
from routing.core.wordpiece import BertIds

MINILM_STATIC_MAX_TOKENS = 512  # a static embedder has no position limit; this only bounds the cost of one text
# Zipf/SIF weight a / (a + p(token)), p estimated from the token's id as its frequency rank (Model2Vec's
# recipe). On the llmrouter queries a=1e-5 kept the most 10-nearest neighbours of the minilm vectors (0.27 of
# them, against 0.22 unweighted and 0.23 with Model2Vec's 1e-4); see docs/BENCHMARKS.md.
MINILM_STATIC_SIF = 1e-5


def distil_minilm_static(target: Path, *, cache_dir: Path | str | None = None, batch_size: int = 1024,
                         vocab_limit: int | None = None, progress: ProgressCallback | None = None) -> Path:
    """Distil all-MiniLM-L6-v2 into a static table at ``target`` (.npy, float32, one 384-dim row per token id).

    Model2Vec's first step: every token id of the MiniLM vocabulary goes through the ONNX model alone, as
    ``[CLS] token [SEP]``, and its row is the mean of the three output vectors (the embedder's own pooling over
    the whole input). The table is the raw distillate; MiniLMStaticEmbedder centres and weights it on loading.
    ``vocab_limit`` distils only the first ids (for tests; rows past it stay zero). The file appears atomically.
    """
    target = Path(target)
    teacher = MiniLMOnnxEmbedder(cache_dir=cache_dir)
    teacher._load()
    tokenizer, session = teacher._tokenizer, teacher._session
    vocab = tokenizer.get_vocab_size()
    limit = vocab if vocab_limit is None else min(vocab, _check_positive("vocab_limit", vocab_limit))
    cls, sep = tokenizer.token_to_id("[CLS]"), tokenizer.token_to_id("[SEP]")
    table = np.zeros((vocab, MINILM_DIMENSIONS), dtype=np.float32)
    for part in _batches(limit, _check_positive("batch_size", batch_size)):
        ids = np.arange(part.start, part.stop, dtype=np.int64)
        input_ids = np.stack([np.full_like(ids, cls), ids, np.full_like(ids, sep)], axis=1)
        feed = {"input_ids": input_ids, "attention_mask": np.ones_like(input_ids),
                "token_type_ids": np.zeros_like(input_ids)}
        hidden = session.run(None, {name: feed[name] for name in teacher._inputs})[0]
        table[part] = hidden.mean(axis=1)
        if progress is not None:
            progress(part.stop, limit)
    target.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp_name = tempfile.mkstemp(prefix=target.stem + ".", suffix=".tmp.npy", dir=target.parent)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(handle, "wb") as file:
            np.save(file, table)
        tmp.chmod(0o644)  # mkstemp makes it private; the cache folder may be shared
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    return target


def minilm_static_path(cache_dir: Path | str, *, vocab_limit: int | None = None,
                       progress: ProgressCallback | None = None) -> Path:
    """Return the distilled static MiniLM table in ``cache_dir``, distilling it first if it is not there."""
    suffix = "" if vocab_limit is None else f"-first{int(vocab_limit)}"
    path = Path(cache_dir) / f"all-MiniLM-L6-v2-{_minilm_version()}-static{suffix}.npy"
    if not path.exists():
        distil_minilm_static(path, cache_dir=cache_dir, vocab_limit=vocab_limit, progress=progress)
    return path


def _print_distil_progress(done: int, total: int) -> None:
    if done == total or done % 8192 < 1024:
        print(f"distilling minilm-static: {done}/{total} tokens", flush=True)


class MiniLMStaticEmbedder:
    """A static embedder distilled from all-MiniLM-L6-v2 (the Model2Vec recipe): one vector per token, averaged.

    1. Once per machine, each vocabulary token goes through MiniLM alone (see distil_minilm_static); the table
       is cached next to the ONNX export.
    2. On loading, the rows are centred (PCA at full width, whose rotation cosine ignores) and scaled by a
       Zipf-estimated SIF weight, so frequent, low-id tokens (punctuation, single characters) count less.
    3. A text is tokenised without special tokens (at most 512 tokens); its vector is the mean of its tokens'
       rows at unit length. A text with no tokens gets the row of ``[CLS] [SEP]``.
    No transformer runs per query: a short text costs a tokenizer call and a small gather.
    """

    dimensions = MINILM_DIMENSIONS

    def __init__(self, *, cache_dir: Path | str | None = None, sif: float = MINILM_STATIC_SIF,
                 vocab_limit: int | None = None, name: str = "minilm-static") -> None:
        self.name = name
        self.cache_dir = Path(cache_dir) if cache_dir is not None else default_onnx_dir()
        if not sif > 0:
            raise ValueError(f"sif must be positive, got {sif}")
        self.sif = float(sif)
        self.vocab_limit = vocab_limit
        self._lock = threading.Lock()
        self._table: NDArray[np.float32] | None = None
        self._empty: NDArray[np.float32] | None = None
        self._tokenizer: Any = None
        self._ids: BertIds | None = None

    def _load(self) -> None:
        with self._lock:
            if self._table is not None:
                return
            tokenizer = minilm_tokenizer(MINILM_STATIC_MAX_TOKENS)
            path = minilm_static_path(self.cache_dir, vocab_limit=self.vocab_limit, progress=_print_distil_progress)
            raw = np.load(path).astype(np.float32, copy=False)
            if raw.shape != (tokenizer.get_vocab_size(), self.dimensions):
                raise RuntimeError(f"{path} holds a {raw.shape} table, expected "
                                   f"({tokenizer.get_vocab_size()}, {self.dimensions}); delete it to distil again")
            distilled = raw.shape[0] if self.vocab_limit is None else min(raw.shape[0], self.vocab_limit)
            inverse_rank = 1.0 / np.arange(2, raw.shape[0] + 2, dtype=np.float64)
            weights = self.sif / (self.sif + inverse_rank / inverse_rank.sum())
            table = ((raw - raw[:distilled].mean(axis=0)) * weights[:, None]).astype(np.float32)
            empty = [tokenizer.token_to_id("[CLS]"), tokenizer.token_to_id("[SEP]")]
            self._empty = normalise_rows(table[empty].mean(axis=0))
            self._ids = BertIds(tokenizer, max_tokens=MINILM_STATIC_MAX_TOKENS)
            self._tokenizer, self._table = tokenizer, table

    def _vector(self, ids: Sequence[int]) -> NDArray[np.float32]:
        assert self._table is not None and self._empty is not None
        if len(ids) == 0:
            return self._empty
        return normalise_rows(self._table[np.asarray(ids, dtype=np.intp)].mean(axis=0))

    def embed(self, texts: Sequence[str], *, progress: ProgressCallback | None = None) -> NDArray[np.float32]:
        """Return one unit-length row per text."""
        out = np.empty((len(texts), self.dimensions), dtype=np.float32)
        if len(texts) == 0:
            return out
        self._load()
        if len(texts) == 1:  # the serving path: the same ids as the tokenizer's, a sixth of the time (wordpiece.py)
            assert self._ids is not None
            out[0] = self._vector(self._ids.ids(texts[0]))
        else:
            for i, encoding in enumerate(self._tokenizer.encode_batch(list(texts), add_special_tokens=False)):
                out[i] = self._vector(encoding.ids)
        if progress is not None:
            progress(len(texts), len(texts))
        return out


@register_embedder(
    "minilm-static", dimensions=MINILM_DIMENSIONS, multilingual=False,
    description="static token vectors distilled from all-MiniLM-L6-v2 (Model2Vec recipe, distilled once per "
                "machine); a fraction of a millisecond per query, less accurate than minilm",
)
def minilm_static(*, cache_dir: Path | str | None = None, sif: float = MINILM_STATIC_SIF,
                  vocab_limit: int | None = None) -> Embedder:
    return MiniLMStaticEmbedder(cache_dir=cache_dir, sif=sif, vocab_limit=vocab_limit)
