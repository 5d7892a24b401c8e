"""``openai``: vectors from any OpenAI-compatible /v1/embeddings endpoint, through an ``EmbeddingClient``."""
from __future__ import annotations

import threading
from collections.abc import Sequence

import numpy as np
from numpy.typing import NDArray

from routing.core.embedding.registry import (
    Embedder,
    EmbeddingClient,
    ProgressCallback,
    _batches,
    _check_positive,
    normalise_rows,
    register_embedder,
)


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
