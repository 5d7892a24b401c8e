"""The query embedder of this process: one per name, behind a micro-batcher, with a cache of recent queries."""
from __future__ import annotations

import logging
import threading
from collections import OrderedDict

import numpy as np
from django.conf import settings

from routing.core.batching import MicroBatcher
from routing.core.embedding import Embedder, get_embedder
from routing.serving import ServingError
from routing.serving.tables import keep_loaded

_log = logging.getLogger(__name__)


class _Embedding:
    """One embedder per name for this process, behind a micro-batcher, with an in-memory cache of recent queries.

    Concurrent requests of one process (threaded workers) are embedded together: up to
    AVENGERS_EMBED_MAX_BATCH texts per call for a remote embedder (``openai:...``), where a batch saves round
    trips, and one at a time for the local ONNX models, where padding a batch to its longest text costs more
    CPU than it saves (docs/BENCHMARKS.md); the batcher then only makes the threads take turns.
    """

    def __init__(self, capacity: int = 4096) -> None:
        self._embedders: dict[str, Embedder] = {}
        self._batchers: dict[str, MicroBatcher] = {}
        self._lock = threading.Lock()
        self._recent: OrderedDict[tuple[str, str], np.ndarray] = OrderedDict()
        self._capacity = capacity

    def embedder(self, name: str) -> Embedder:
        embedder = self._embedders.get(name)
        if embedder is None:
            with self._lock:
                embedder = self._embedders.get(name)
                if embedder is None:
                    embedder = get_embedder(name)
                    self._embedders[name] = embedder
                    keep_loaded()
        return embedder

    def batcher(self, name: str) -> MicroBatcher:
        batcher = self._batchers.get(name)
        if batcher is None:
            embedder = self.embedder(name)  # outside the lock: embedder() takes it too
            with self._lock:
                batcher = self._batchers.get(name)
                if batcher is None:
                    remote = name == "openai" or name.startswith("openai:")
                    batcher = MicroBatcher(lambda texts: embedder.embed(texts),
                                           max_batch=settings.EMBED_MAX_BATCH if remote else 1,
                                           max_wait_ms=settings.EMBED_MAX_WAIT_MS)
                    self._batchers[name] = batcher
        return batcher

    def embed(self, name: str, text: str) -> np.ndarray:
        key = (name, text)
        with self._lock:
            vector = self._recent.get(key)
            if vector is not None:
                self._recent.move_to_end(key)
                return vector
        vector = self.batcher(name).embed_one(text)
        with self._lock:
            self._recent[key] = vector
            while len(self._recent) > self._capacity:
                self._recent.popitem(last=False)
        return vector


_embedding = _Embedding()


def embed_query(embedder: str, text: str) -> np.ndarray:
    """Return the embedding of one query; raise ServingError (503) when the embedder fails."""
    try:
        return _embedding.embed(embedder, text)
    except Exception as exc:  # noqa: BLE001 - an embedder that cannot load is the service's problem, said plainly
        _log.exception("embedding with %s failed", embedder)
        raise ServingError(503, "embedding_failed", f"The embedder {embedder!r} failed: {exc}") from None
