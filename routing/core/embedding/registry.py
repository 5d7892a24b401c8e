"""The embedders' registry and what every embedder shares: its Protocol, unit-length rows, batching."""
from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from numpy.typing import NDArray

from avengers_web.core.registry import Decorated, Registry

ProgressCallback = Callable[[int, int], None]  # (texts done, texts in all), called as batches finish

DEFAULT_EMBEDDER = "minilm-static"  # the platform's AVENGERS_EMBEDDER defaults to it; so does the offline evaluator


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


EMBEDDERS: Registry[EmbedderInfo] = Registry("embedder")


def register_embedder(name: str, *, dimensions: int, multilingual: bool,
                      description: str) -> Callable[[Decorated], Decorated]:
    """Register an embedder factory under ``name``, with its metadata."""
    return EMBEDDERS.registering(name, lambda factory: EmbedderInfo(name, dimensions, multilingual, description,
                                                                    factory))


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
