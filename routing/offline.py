"""Offline evaluator: the paper's protocol on any records file, with no database and no server.

    python -m routing.offline evaluate RECORDS.jsonl [--k 64] [--seed 42] [--embedder minilm]
        [--method kmeans] [--top-n 1] [--shrinkage auto] [--json OUT.json]
    python -m routing.offline sweep RECORDS.jsonl [--k 1,2,4,...,1024] [--seeds 42,999,2024,2025,3407]
        [--out DIR]

Embeddings are cached by (embedder, text hash) in AVENGERS_CACHE_DIR (default ~/.cache/avengers), so a
second run embeds nothing.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from evaluation.core.datasets import DatasetFileError, parse_dataset_file, seeded_split
from routing.core.evaluation import (
    METHODS,
    RouterConfig,
    Split,
    choose_shrinkage,
    cross_validate,
    evaluate,
    fit_cluster_router,
    route_scores,
    summarise,
)

DEFAULT_K = 64
DEFAULT_SEED = 42


class Progress:
    """A terminal progress bar on stderr (a line per quarter when stderr is not a terminal)."""

    def __init__(self, label: str) -> None:
        self.label = label
        self.started = time.perf_counter()
        self.tty = sys.stderr.isatty()
        self.last_quarter = -1

    def __call__(self, done: int, total: int) -> None:
        fraction = done / total if total else 1.0
        elapsed = time.perf_counter() - self.started
        rate = done / elapsed if elapsed > 0 else 0.0
        eta = (total - done) / rate if rate > 0 else 0.0
        text = f"{self.label}: {done}/{total} ({100 * fraction:.0f}%, {rate:.3g}/s, eta {eta:.0f} s)"
        if self.tty:
            bar = "#" * int(30 * fraction)
            sys.stderr.write(f"\r[{bar:<30}] {text}" + ("\n" if done >= total else ""))
            sys.stderr.flush()
        elif int(4 * fraction) > self.last_quarter:
            self.last_quarter = int(4 * fraction)
            print(text, file=sys.stderr, flush=True)


def default_cache() -> Path:
    return Path(os.environ.get("AVENGERS_CACHE_DIR", Path.home() / ".cache" / "avengers")) / "embeddings.sqlite3"


def load_records(path: Path, seed: int) -> tuple[list[str], dict[str, Any]]:
    """Read a records file; return the model names and texts, scores and datasets of train and test."""
    try:
        parsed = parse_dataset_file(path.read_bytes(), filename=path.name)
    except DatasetFileError as exc:
        raise SystemExit(f"{path}: {exc}") from None
    models = sorted({m for r in parsed.records for m in r.scores})
    if not models:
        raise SystemExit(f"{path}: no line has scores; the evaluator needs the records format")
    splits: dict[tuple[str, str], str] = {}
    by_dataset: dict[str, list[str]] = {}
    for r in parsed.records:
        if r.split is None:
            by_dataset.setdefault(r.dataset or "", []).append(r.id)
    for name, ids in by_dataset.items():
        for key, split in seeded_split(ids, seed=seed).items():
            splits[(name, key)] = split
    parts: dict[str, dict[str, list[Any]]] = {"train": {"texts": [], "scores": [], "datasets": []},
                                              "test": {"texts": [], "scores": [], "datasets": []}}
    for r in parsed.records:
        split = r.split or splits[(r.dataset or "", r.id)]
        part = parts[split]
        part["texts"].append(r.query)
        part["scores"].append([r.scores.get(m, np.nan) for m in models])
        part["datasets"].append(r.dataset or "")
    return models, parts


def embed_all(texts: Sequence[str], embedder_name: str, cache: Path) -> tuple[np.ndarray, float]:
    from routing.core.embedding import CachedEmbedder, EmbeddingCache, get_embedder

    cache.parent.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    embedder = CachedEmbedder(get_embedder(embedder_name), EmbeddingCache(cache))
    vectors = embedder.embed(list(texts), progress=Progress(f"embedding with {embedder_name}"))
    return vectors, time.perf_counter() - started


def prepare(path: Path, seed: int, embedder: str, cache: Path) -> tuple[list[str], Split, Split, float]:
    models, parts = load_records(path, seed)
    texts = parts["train"]["texts"] + parts["test"]["texts"]
    vectors, seconds = embed_all(texts, embedder, cache)
    n_train = len(parts["train"]["texts"])

    def split(name: str, rows: np.ndarray) -> Split:
        return Split(rows, np.asarray(parts[name]["scores"], dtype=np.float64),
                     np.asarray(parts[name]["datasets"], dtype=np.str_))

    return models, split("train", vectors[:n_train]), split("test", vectors[n_train:]), seconds


def resolve_shrinkage(value: str, train: Split, models: list[str], config: RouterConfig) -> tuple[float, dict[str, float]]:
    if value != "auto":
        return float(value), {}
    cv = cross_validate(train, models, config, progress=Progress("choosing the shrinkage by 5-fold CV on train"))
    return choose_shrinkage(cv), {str(k): round(float(np.mean(v)), 3) for k, v in cv.items()}


def command_evaluate(args: argparse.Namespace) -> dict[str, Any]:
    models, train, test, embed_seconds = prepare(args.records, args.seed, args.embedder, args.cache)
    config = RouterConfig(k=args.k, seed=args.seed, method=args.method, top_n=args.top_n)
    shrinkage, cv = resolve_shrinkage(args.shrinkage, train, models, config)
    config = replace(config, shrinkage=shrinkage)
    timings: dict[str, float] = {"embedding_s": embed_seconds}
    reports = evaluate(train, test, models, config, timings)
    result = {
        "config": {**asdict(config), "embedder": args.embedder, "records": str(args.records), "models": models,
                   "train_queries": len(train.datasets), "test_queries": len(test.datasets),
                   "shrinkage_cv": cv, "date": datetime.now(timezone.utc).isoformat(timespec="seconds")},
        "methods": {name: {"per_dataset": r.per_dataset, "in_distribution": r.in_distribution,
                           "out_of_distribution": r.out_of_distribution} for name, r in reports.items()},
        "timings": {k: round(v, 3) for k, v in timings.items()},
    }
    a, b, o = (reports[m].in_distribution for m in ("avengers", "best_single", "oracle"))
    if a is not None and b is not None and o is not None and o > b:
        result["gap_to_oracle_closed"] = round((a - b) / (o - b), 4)
    print_table(result)
    return result


def print_table(result: dict[str, Any]) -> None:
    methods = result["methods"]
    datasets = sorted({d for m in methods.values() for d in m["per_dataset"]})
    width = max(12, *(len(d) for d in datasets))
    print(f"{'dataset':<{width}} " + " ".join(f"{m[:11]:>11}" for m in METHODS))
    for d in datasets:
        cells = [methods[m]["per_dataset"].get(d) for m in METHODS]
        print(f"{d:<{width}} " + " ".join(f"{c:>11.1f}" if c is not None else f"{'-':>11}" for c in cells))
    for key, label in (("in_distribution", "ID mean"), ("out_of_distribution", "OOD mean")):
        cells = [methods[m][key] for m in METHODS]
        if any(c is not None for c in cells):
            print(f"{label:<{width}} " + " ".join(f"{c:>11.1f}" if c is not None else f"{'-':>11}" for c in cells))
    if "gap_to_oracle_closed" in result:
        print(f"avengers closes {100 * result['gap_to_oracle_closed']:.1f}% of the gap from best_single to oracle")


def parse_list(text: str, kind: type = int) -> list[Any]:
    return [kind(part) for part in text.split(",") if part.strip()]


def command_sweep(args: argparse.Namespace) -> dict[str, Any]:
    from routing.core.profiles import build_profiles, select_models
    from routing.core.router import ClusterRouter

    seeds = parse_list(args.seeds)
    ks = parse_list(args.k)
    models, train, test, embed_seconds = prepare(args.records, seeds[0], args.embedder, args.cache)
    in_dist = set(train.datasets.tolist())
    base = RouterConfig(k=DEFAULT_K, seed=seeds[0])
    shrinkage, cv = resolve_shrinkage(args.shrinkage, train, models, base)

    def accuracy(router: ClusterRouter, split: Split) -> float:
        return summarise(route_scores(router, split), split.datasets, in_dist).in_distribution or 0.0

    k_rows = []
    bar = Progress("K sweep")
    for i, k in enumerate(ks):
        runs: dict[str, list[float]] = {"plain_train": [], "plain_test": [], "robust_train": [], "robust_test": []}
        for seed in seeds:
            router = fit_cluster_router(train, models, replace(base, k=k, seed=seed, shrinkage=0.0))
            labels = router.clustering.assign(train.embeddings)
            robust = ClusterRouter(router.clustering, build_profiles(
                labels, train.scores, k=router.clustering.k, models=models, shrinkage=shrinkage))
            for name, r in (("plain", router), ("robust", robust)):
                runs[f"{name}_train"].append(accuracy(r, train))
                runs[f"{name}_test"].append(accuracy(r, test))
        k_rows.append({"k": k, **{key: {"mean": float(np.mean(v)), "std": float(np.std(v)), "runs": v}
                                  for key, v in runs.items()}})
        bar(i + 1, len(ks))

    method_rows = []
    for method in parse_list(args.methods, str):
        values = []
        for seed in seeds[: args.ablation_seeds]:
            config = replace(base, method=method, seed=seed, shrinkage=shrinkage)
            values.append(accuracy(fit_cluster_router(train, models, config), test))
        method_rows.append({"method": method, "mean": float(np.mean(values)), "std": float(np.std(values))})
        print(f"method {method}: {np.mean(values):.1f} ± {np.std(values):.1f}", file=sys.stderr)

    embedder_rows = []
    for name in parse_list(args.embedders, str):
        _, tr, te, seconds = prepare(args.records, seeds[0], name, args.cache)
        values = [accuracy(fit_cluster_router(tr, models, replace(base, seed=seed, shrinkage=shrinkage)), te)
                  for seed in seeds[: args.ablation_seeds]]
        embedder_rows.append({"embedder": name, "mean": float(np.mean(values)), "std": float(np.std(values)),
                              "embedding_s": round(seconds, 2)})
        print(f"embedder {name}: {np.mean(values):.1f} ± {np.std(values):.1f}", file=sys.stderr)

    team_rows = []
    full = fit_cluster_router(train, models, replace(base, shrinkage=shrinkage))
    for size in range(1, len(models) + 1):
        team = select_models(full.profiles, size)
        router = ClusterRouter(full.clustering, full.profiles.subset(team))
        index = [models.index(m) for m in team]
        sub_test = Split(test.embeddings, test.scores[:, index], test.datasets)
        team_rows.append({"models": size, "team": team, "test": accuracy(router, sub_test)})

    result = {
        "config": {"records": str(args.records), "embedder": args.embedder, "seeds": seeds, "k": ks,
                   "shrinkage": shrinkage, "shrinkage_cv": cv, "ablation_k": DEFAULT_K,
                   "date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "embedding_s": embed_seconds},
        "k_sweep": k_rows, "methods": method_rows, "embedders": embedder_rows, "models": team_rows,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "sweep.json").write_text(json.dumps(result, indent=2))
    draw_plots(result, args.out)
    print(f"wrote {args.out / 'sweep.json'} and the figures in {args.out}")
    return result


def draw_plots(result: dict[str, Any], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = result["k_sweep"]
    ks = [r["k"] for r in rows]
    fig, ax = plt.subplots(figsize=(7, 4.2))
    styles = {"plain": "--", "robust": "-"}
    colours = {"train": "tab:blue", "test": "tab:red"}
    for kind in ("plain", "robust"):
        for part in ("train", "test"):
            mean = np.array([r[f"{kind}_{part}"]["mean"] for r in rows])
            std = np.array([r[f"{kind}_{part}"]["std"] for r in rows])
            label = f"{part}, {'plain means (paper)' if kind == 'plain' else 'shrunk profiles (ours)'}"
            ax.plot(ks, mean, styles[kind], color=colours[part], marker="o", ms=3, label=label)
            ax.fill_between(ks, mean - std, mean + std, color=colours[part], alpha=0.12)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("number of clusters K")
    ax.set_ylabel("accuracy, mean over datasets (%)")
    ax.set_title("Accuracy against K (mean ± std over seeds)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "fig3_k_sweep.png", dpi=130)
    plt.close(fig)

    team = result["models"]
    fig, ax = plt.subplots(figsize=(6, 3.8))
    ax.plot([r["models"] for r in team], [r["test"] for r in team], marker="o")
    for r in team:
        ax.annotate(f"{r['test']:.1f}", (r["models"], r["test"]), textcoords="offset points", xytext=(0, 6),
                    ha="center", fontsize=8)
    ax.set_xlabel("number of models M (chosen by rank score)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title("Accuracy against team size")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out / "fig4_models.png", dpi=130)
    plt.close(fig)

    for key, name, title in (("methods", "method", "Table 4: clustering methods (K=64)"),
                             ("embedders", "embedder", "Table 5: embedding models (K=64)")):
        table = result[key]
        if not table:
            continue
        fig, ax = plt.subplots(figsize=(6, 0.6 + 0.45 * len(table)))
        labels = [r[name] for r in table]
        means = [r["mean"] for r in table]
        ax.barh(labels, means, xerr=[r["std"] for r in table], color="tab:green", alpha=0.7)
        for y, row in enumerate(table):
            ax.text(row["mean"] + row["std"], y, f"  {row['mean']:.1f}", va="center", fontsize=9)
        ax.set_xlim(min(means) - 5, max(means) + 5)
        ax.set_xlabel("test accuracy (%)")
        ax.set_title(title)
        fig.tight_layout()
        fig.savefig(out / f"table{4 if key == 'methods' else 5}_{key}.png", dpi=130)
        plt.close(fig)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m routing.offline", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("records", type=Path)
    common.add_argument("--embedder", default="minilm")
    common.add_argument("--cache", type=Path, default=default_cache(), help="embedding cache (sqlite)")
    common.add_argument("--shrinkage", default="auto", help="pseudo-queries toward the overall mean, or 'auto' (CV)")
    ev = sub.add_parser("evaluate", parents=[common], help="compare routers and baselines on the test split")
    ev.add_argument("--k", type=int, default=DEFAULT_K)
    ev.add_argument("--seed", type=int, default=DEFAULT_SEED)
    ev.add_argument("--method", default="kmeans")
    ev.add_argument("--top-n", type=int, default=1)
    ev.add_argument("--json", type=Path)
    sw = sub.add_parser("sweep", parents=[common], help="K sweep and ablations, with plots")
    sw.add_argument("--k", default="1,2,4,8,16,32,64,128,256,512,1024")
    sw.add_argument("--seeds", default="42,999,2024,2025,3407")
    sw.add_argument("--methods", default="kmeans,agglomerative,gmm,spectral,birch")
    sw.add_argument("--embedders", default="minilm,e5-small")
    sw.add_argument("--ablation-seeds", type=int, default=3, help="seeds used by the method and embedder ablations")
    sw.add_argument("--out", type=Path, default=Path("sweep-out"))
    args = parser.parse_args(argv)
    if not args.records.exists():
        parser.error(f"{args.records} does not exist")
    if args.command == "evaluate":
        if args.k < 1 or args.top_n < 1:
            parser.error("--k and --top-n must be at least 1")
        result = command_evaluate(args)
        if args.json:
            args.json.write_text(json.dumps(result, indent=2))
    else:
        command_sweep(args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
