"""An sqlite cache of embedders' vectors, and the embedder that consults it before embedding."""
from __future__ import annotations

import sqlite3
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from evaluation.core.datasets import text_hash
from routing.core.embedding.registry import Embedder, ProgressCallback, _batches


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
