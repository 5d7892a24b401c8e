"""Embedding speed (issue 3): sentence-transformers on torch against our ONNX + length-grouped batches.

    .venv/bin/python bench/embed_speed.py [--records ../shared/data/llmrouter/records.jsonl] [--limit N] [--int8]

Both passes run in one process with the same thread count (all cores) on the same queries, after a short
warm-up each: the baseline is `SentenceTransformer.encode(queries, batch_size=32)` in file order, ours is
the registry's `minilm` embedder. Prints queries/s, the ratio, how far the vectors are apart, the token
lengths, the time of a cached second run, and a Markdown table for docs/BENCHMARKS.md.
"""
from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from routing.core.embedding import (  # noqa: E402
    CachedEmbedder,
    EmbeddingCache,
    MiniLMOnnxEmbedder,
    MiniLMTorchEmbedder,
    default_onnx_dir,
    minilm_onnx_path,
    text_hash,
)

DEFAULT_RECORDS = REPO.parent / "shared" / "data" / "llmrouter" / "records.jsonl"


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "-"


def load_queries(path: Path, limit: int | None) -> list[str]:
    queries = []
    with path.open(encoding="utf-8") as lines:
        for line in lines:
            if line.strip():
                queries.append(str(json.loads(line)["query"]))
            if limit is not None and len(queries) >= limit:
                break
    return queries


def min_cosine(a: NDArray[np.float32], b: NDArray[np.float32]) -> float:
    cos = (a * b).sum(axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    return float(cos.min())


def timed(label: str, run: Callable[[], NDArray[np.float32]]) -> tuple[NDArray[np.float32], float]:
    print(f"  {label} ...", end="", flush=True)
    started = time.perf_counter()
    out = run()
    seconds = time.perf_counter() - started
    print(f" {seconds:.1f} s", flush=True)
    return out, seconds


def run_passes(
    passes: dict[str, Callable[[list[str]], NDArray[np.float32]]], queries: list[str], rounds: int
) -> tuple[dict[str, NDArray[np.float32]], dict[str, float]]:
    """Time each pass over all queries; with several rounds, part by part, alternating which goes first.

    On a shared machine the load changes over minutes; alternating over parts exposes every pass to it alike.
    """
    parts = [list(map(int, index)) for index in np.array_split(np.arange(len(queries)), rounds)]
    outputs: dict[str, list[NDArray[np.float32]]] = {name: [] for name in passes}
    seconds = dict.fromkeys(passes, 0.0)
    for number, index in enumerate(parts):
        texts = [queries[i] for i in index]
        names = list(passes) if number % 2 == 0 else list(passes)[::-1]
        for name in names:
            label = f"{name}, part {number + 1}/{rounds}" if rounds > 1 else name
            out, spent = timed(label, lambda: passes[name](texts))
            outputs[name].append(out)
            seconds[name] += spent
    return {name: np.concatenate(out) for name, out in outputs.items()}, seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=Path, default=DEFAULT_RECORDS, help="JSON lines with a `query` field")
    parser.add_argument("--limit", type=int, default=None, help="only the first N queries")
    parser.add_argument("--batch-size", type=int, default=32, help="batch size of both passes")
    parser.add_argument("--onnx-dir", type=Path, default=None, help=f"ONNX cache folder (default {default_onnx_dir()})")
    parser.add_argument("--int8", action="store_true", help="also time minilm-int8 (dynamic int8 quantisation)")
    parser.add_argument("--rounds", type=int, default=1,
                        help="split the queries into this many parts and alternate the passes part by part")
    args = parser.parse_args()

    threads = os.cpu_count() or 1
    queries = load_queries(args.records, args.limit)
    onnx_dir = args.onnx_dir or default_onnx_dir()
    date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    print(f"machine: {cpu_model()}, {threads} cores, {platform.system()} {platform.release()}; python "
          f"{platform.python_version()}; date {date}")
    print(f"versions: onnxruntime {version('onnxruntime')}, tokenizers {version('tokenizers')}, torch "
          f"{version('torch')}, sentence-transformers {version('sentence-transformers')}, transformers "
          f"{version('transformers')}")
    print(f"queries: {len(queries)} from {args.records}; threads {threads} for both; batch size {args.batch_size} "
          f"(ours also at most 1024 padded tokens a batch)")

    export_s: dict[str, float | None] = {}
    for quantize in (False, True) if args.int8 else (False,):
        key = "int8" if quantize else "fp32"
        fresh = not any(onnx_dir.glob(f"all-MiniLM-L6-v2-*{'-int8' if quantize else ''}.onnx"))
        started = time.perf_counter()
        path = minilm_onnx_path(onnx_dir, quantize=quantize)
        export_s[key] = time.perf_counter() - started if fresh else None
        state = f"exported in {export_s[key]:.1f} s" if fresh else "reused"
        print(f"onnx {key}: {path} ({state})")

    print("loading and warming up")
    baseline = MiniLMTorchEmbedder(batch_size=args.batch_size, threads=threads)
    ours = MiniLMOnnxEmbedder(cache_dir=onnx_dir, batch_size=args.batch_size, threads=threads)
    warm = queries[: 2 * args.batch_size]
    baseline.model.encode(warm, batch_size=args.batch_size)
    ours.embed(warm)

    lengths = ours.token_lengths(queries)
    print(f"tokens: median {statistics.median(lengths.tolist()):.0f}, mean {lengths.mean():.0f}, "
          f"p90 {np.percentile(lengths, 90):.0f}, at 256 (truncated) {(lengths >= 256).mean():.1%}")

    passes: dict[str, Callable[[list[str]], NDArray[np.float32]]] = {
        "baseline": lambda part: np.asarray(
            baseline.model.encode(part, batch_size=args.batch_size, normalize_embeddings=True), dtype=np.float32),
        "ours": ours.embed,
    }
    if args.int8:
        int8 = MiniLMOnnxEmbedder(cache_dir=onnx_dir, batch_size=args.batch_size, threads=threads, quantize=True,
                                  name="minilm-int8")
        int8.embed(warm)
        passes["int8"] = int8.embed
    print(f"timing ({args.rounds} round{'s' if args.rounds > 1 else ''})")
    outputs, seconds = run_passes(passes, queries, args.rounds)
    reference, base_s = outputs["baseline"], seconds["baseline"]
    vectors, ours_s = outputs["ours"], seconds["ours"]
    cos = min_cosine(vectors, reference)
    rows = [("sentence-transformers (torch), file order", base_s, 1.0, "-"),
            ("ONNX Runtime fp32, length-grouped (`minilm`)", ours_s, base_s / ours_s, f"{cos:.6f}")]
    if args.int8:
        quantised, int8_s = outputs["int8"], seconds["int8"]
        rows.append(("ONNX Runtime int8, length-grouped (`minilm-int8`)", int8_s, base_s / int8_s,
                     f"{min_cosine(quantised, reference):.6f}"))

    with tempfile.TemporaryDirectory(prefix="embed-bench-") as tmp:
        cache = EmbeddingCache(Path(tmp) / "cache.sqlite3")
        started = time.perf_counter()
        cache.put_many(ours.name, {text_hash(q): v for q, v in zip(queries, vectors)})
        store_s = time.perf_counter() - started
        cached = CachedEmbedder(ours, cache)
        again, cached_s = timed("cached second run: CachedEmbedder, every text stored", lambda: cached.embed(queries))
        assert np.array_equal(again, vectors)
        cache.close()

    n = len(queries)
    print()
    print(f"baseline  {n / base_s:8.1f} queries/s  ({base_s:.1f} s)")
    print(f"ours      {n / ours_s:8.1f} queries/s  ({ours_s:.1f} s)   ratio {base_s / ours_s:.2f}x (goal >= 2x)")
    if args.int8:
        to_fp32 = (quantised * vectors).sum(axis=1)
        print(f"ours int8 {n / int8_s:8.1f} queries/s  ({int8_s:.1f} s)   ratio {base_s / int8_s:.2f}x; "
              f"min cosine to sentence-transformers {min_cosine(quantised, reference):.6f}; to fp32: min "
              f"{to_fp32.min():.6f}, 1st percentile {np.percentile(to_fp32, 1):.6f}, median {np.median(to_fp32):.6f}")
    print(f"max cosine difference ours vs baseline: {1 - cos:.2e} (min cosine {cos:.7f})")
    print(f"cache: storing {n} vectors {store_s:.2f} s; cached second run {cached_s:.3f} s")

    print("\nMarkdown for docs/BENCHMARKS.md:\n")
    command = "`.venv/bin/python bench/embed_speed.py" + (f" --limit {args.limit}" if args.limit else "") + (
        " --int8" if args.int8 else "") + (f" --rounds {args.rounds}`" if args.rounds > 1 else "`")
    print(f"Machine: {cpu_model()}, {threads} cores; {date}. Command: {command} ({n} queries, batch size "
          f"{args.batch_size}, {threads} threads for both). Tokens per query: median "
          f"{statistics.median(lengths.tolist()):.0f}, {(lengths >= 256).mean():.1%} truncated at 256.\n")
    print("| pass | seconds | queries/s | speed-up | min cosine to sentence-transformers |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for label, spent, ratio, cosine in rows:
        print(f"| {label} | {spent:.1f} | {n / spent:.1f} | {ratio:.2f}x | {cosine} |")
    print(f"| cached second run (CachedEmbedder, sqlite) | {cached_s:.3f} | {n / cached_s:.0f} | - | identical |")
    for key, export in export_s.items():
        if export is not None:
            print(f"\nFirst-time ONNX export ({key}): {export:.1f} s.")


if __name__ == "__main__":
    main()
