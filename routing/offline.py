"""Offline evaluator: the paper's protocol on any records file, with no database and no server.

    python -m routing.offline evaluate RECORDS.jsonl [--seeds 42,999,2024,2025,3407] [--resplit]
        [--test-fraction 0.3] [--embedder minilm-static] [--router auto] [--set NAME=VALUE ...] [--k 64]
        [--method kmeans] [--top-n 1] [--json OUT.json]
    python -m routing.offline sweep RECORDS.jsonl [--k 1,2,4,...,1024] [--seeds 42,999,2024,2025,3407]
        [--out DIR]

``evaluate`` runs the protocol once per seed: split (``--resplit`` redraws every dataset's split per seed,
stratified by dataset, also where the file carries splits), choose the default router by 5-fold CV on the
train lines among the candidates (``--router auto``, the default) or take the one named, fit on train, score
on test. It reports each method's mean and standard deviation over the seeds, per dataset and on the ID and
OOD means, with ``imp_max`` (minus the per-dataset Max Expert), ``gap_closed`` (share of the best-single to
oracle gap) and ``oracle_gap`` ((oracle - method) / oracle).

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
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from evaluation.core.datasets import DatasetFileError, parse_dataset_file, seeded_split
from routing.core.clustering import CLUSTERING_METHODS
from routing.core.embedding import DEFAULT_EMBEDDER
from routing.core.heldout import (
    BASELINES,
    COMPARED,
    SEEDS,
    RouterConfig,
    Split,
    choose_shrinkage,
    cross_validate,
    fit_cluster_router,
    headline,
    route_scores,
    router_candidates,
    run_protocol,
    summarise,
)
from routing.core.router import ROUTERS

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


def read_records(path: Path) -> tuple[list[str], list[Any]]:
    """Read a records file; return the model names and the parsed records."""
    try:
        parsed = parse_dataset_file(path.read_bytes(), filename=path.name)
    except DatasetFileError as exc:
        raise SystemExit(f"{path}: {exc}") from None
    models = sorted({m for r in parsed.records for m in r.scores})
    if not models:
        raise SystemExit(f"{path}: no line has scores; the evaluator needs the records format")
    return models, parsed.records


def record_splits(records: Sequence[Any], seed: int, *, resplit: bool = False,
                  test_fraction: float = 0.3) -> list[str]:
    """The split of each record: its own, or (without one, or with ``resplit``) a seeded draw per dataset."""
    by_dataset: dict[str, list[str]] = {}
    for r in records:
        if resplit or r.split is None:
            by_dataset.setdefault(r.dataset or "", []).append(r.id)
    drawn: dict[tuple[str, str], str] = {}
    for name, ids in by_dataset.items():
        for key, split in seeded_split(ids, seed=seed, test_fraction=test_fraction).items():
            drawn[(name, key)] = split
    return [drawn[(r.dataset or "", r.id)] if resplit or r.split is None else r.split for r in records]


def load_records(path: Path, seed: int) -> tuple[list[str], dict[str, Any]]:
    """Read a records file; return the model names and texts, scores and datasets of train and test."""
    models, records = read_records(path)
    splits = record_splits(records, seed)
    parts: dict[str, dict[str, list[Any]]] = {"train": {"texts": [], "scores": [], "datasets": []},
                                              "test": {"texts": [], "scores": [], "datasets": []}}
    for r, split in zip(records, splits):
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
    started = time.perf_counter()
    models, records = read_records(args.records)
    vectors, embed_seconds = embed_all([r.query for r in records], args.embedder, args.cache)
    scores = np.asarray([[r.scores.get(m, np.nan) for m in models] for r in records], dtype=np.float64)
    datasets = np.asarray([r.dataset or "" for r in records], dtype=np.str_)
    candidates = router_candidates(args.router, args.set, k=args.k, method=args.method)
    compare = {name: spec.configured(k=args.k, method=args.method) for name, spec in COMPARED.items()}
    runs = []
    bar = Progress(f"{len(args.seeds)} seed(s), the router chosen by 5-fold CV on train")
    for i, seed in enumerate(args.seeds):
        is_test = np.asarray(record_splits(records, seed, resplit=args.resplit, test_fraction=args.test_fraction)) \
            == "test"
        train = Split(vectors[~is_test], scores[~is_test], datasets[~is_test])
        test = Split(vectors[is_test], scores[is_test], datasets[is_test])
        if not len(train.datasets) or not len(test.datasets):
            raise SystemExit(f"{args.records}: seed {seed} leaves no train or no test lines; change --test-fraction")
        done = run_protocol(train, test, models, seed=seed, candidates=candidates, compare=compare,
                            top_n=args.top_n)
        runs.append({
            "seed": seed, "train_queries": int(len(train.datasets)), "test_queries": int(len(test.datasets)),
            "chosen": done.chosen.jsonable(),
            "cv": {label: [round(v, 3) for v in values] for label, values in done.cv.items()},
            "methods": {name: {"per_dataset": r.per_dataset, "in_distribution": r.in_distribution,
                               "out_of_distribution": r.out_of_distribution} for name, r in done.reports.items()},
            "headline": {key: headline(done.reports, key) for key in ("in_distribution", "out_of_distribution")},
        })
        bar(i + 1, len(args.seeds))
    result = {
        "config": {"records": str(args.records), "embedder": args.embedder, "seeds": args.seeds,
                   "resplit": args.resplit, "test_fraction": args.test_fraction, "router": args.router,
                   "k": args.k, "method": args.method, "top_n": args.top_n, "models": models,
                   "candidates": [c.jsonable() for c in candidates],
                   "compare": {name: spec.jsonable() for name, spec in compare.items()},
                   "date": datetime.now(timezone.utc).isoformat(timespec="seconds")},
        "runs": runs,
        "summary": summarise_runs(runs),
        "chosen": _count(run["chosen"]["label"] for run in runs),
        "timings": {"embedding_s": round(embed_seconds, 3), "total_s": round(time.perf_counter() - started, 3)},
    }
    print_table(result)
    return result


def _count(labels: Any) -> dict[str, int]:
    counts: dict[str, int] = {}
    for label in labels:
        counts[label] = counts.get(label, 0) + 1
    return counts


def _stats(values: Sequence[float]) -> dict[str, float]:
    array = np.asarray(values, dtype=np.float64)
    return {"mean": float(array.mean()), "sd": float(array.std(ddof=1)) if len(array) > 1 else 0.0,
            "n": int(len(array))}


def summarise_runs(runs: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Mean and standard deviation over the seeds of every number of every method."""
    summary: dict[str, Any] = {}
    for name in runs[0]["methods"]:
        per_dataset: dict[str, list[float]] = {}
        for run in runs:
            for dataset, value in run["methods"][name]["per_dataset"].items():
                per_dataset.setdefault(dataset, []).append(value)
        row: dict[str, Any] = {"per_dataset": {d: _stats(v) for d, v in sorted(per_dataset.items())}}
        for key in ("in_distribution", "out_of_distribution"):
            values = [run["methods"][name][key] for run in runs if run["methods"][name][key] is not None]
            row[key] = _stats(values) if values else None
            for metric in ("imp_max", "gap_closed", "oracle_gap"):
                got = [run["headline"][key][name][metric] for run in runs
                       if name in run["headline"][key] and metric in run["headline"][key][name]]
                if got:
                    row.setdefault("headline", {}).setdefault(key, {})[metric] = _stats(got)
        summary[name] = row
    return summary


def print_table(result: dict[str, Any]) -> None:
    summary = result["summary"]
    methods = [m for m in ("avengers", *COMPARED, *BASELINES) if m in summary]
    datasets = sorted({d for m in summary.values() for d in m["per_dataset"]})
    width = max(12, *(len(d) for d in datasets))
    seeds = len(result["runs"])
    cell = 13 if seeds > 1 else 11

    def show(stats: dict[str, float] | None, scale: float = 1.0) -> str:
        if stats is None:
            return f"{'-':>{cell}}"
        text = f"{scale * stats['mean']:.1f}" + (f"±{scale * stats['sd']:.1f}" if seeds > 1 else "")
        return f"{text:>{cell}}"

    print(f"{'dataset':<{width}} " + " ".join(f"{m[:cell]:>{cell}}" for m in methods))
    for d in datasets:
        print(f"{d:<{width}} " + " ".join(show(summary[m]["per_dataset"].get(d)) for m in methods))
    for key, label in (("in_distribution", "ID mean"), ("out_of_distribution", "OOD mean")):
        if not any(summary[m][key] for m in methods):
            continue
        print(f"{label:<{width}} " + " ".join(show(summary[m][key]) for m in methods))
        for metric, title, scale in (("imp_max", "imp_max", 1.0), ("gap_closed", "gap closed %", 100.0),
                                     ("oracle_gap", "oracle_gap %", 100.0)):
            cells = [summary[m].get("headline", {}).get(key, {}).get(metric) for m in methods]
            print(f"{'  ' + title:<{width}} " + " ".join(show(c, scale) for c in cells))
    chosen = ", ".join(f"{label} ({n}/{seeds})" for label, n in result["chosen"].items())
    print(f"seeds {', '.join(str(s) for s in result['config']['seeds'])}"
          f"{' (resplit)' if result['config']['resplit'] else ''}; avengers = {chosen}")


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


def parse_value(text: str) -> Any:
    """A --set value: an int, a float (``inf`` included) or the text itself."""
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def parse_params(items: Sequence[str]) -> dict[str, Any]:
    """``--set NAME=VALUE`` items as router parameters (numbers where they parse, ``inf`` included)."""
    params: dict[str, Any] = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name.strip():
            raise ValueError(f"--set takes NAME=VALUE, got {item!r}")
        params[name.strip()] = parse_value(value.strip())
    return params


def check_evaluate_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Validate evaluate's options; every problem is a usage error naming the option."""
    if args.k < 1 or args.top_n < 1:
        parser.error("--k and --top-n must be at least 1")
    if not 0 < args.test_fraction < 1:
        parser.error(f"--test-fraction must be between 0 and 1 (exclusive), got {args.test_fraction}")
    try:
        args.seeds = [args.seed] if args.seed is not None else parse_list(args.seeds)
    except ValueError:
        parser.error(f"--seeds must be comma-separated integers, got {args.seeds!r}")
    if not args.seeds or len(set(args.seeds)) != len(args.seeds):
        parser.error("--seeds needs at least one seed and no seed twice")
    if args.router != "auto" and args.router not in ROUTERS:
        parser.error(f"--router must be auto or one of {', '.join(ROUTERS)}, got {args.router!r}")
    try:
        params = parse_params(args.set)
    except ValueError as exc:
        parser.error(str(exc))
    if params and args.router == "auto":
        parser.error("--set needs --router NAME (the default router's candidates are fixed)")
    try:
        router_candidates(args.router, params)
    except ValueError as exc:
        parser.error(str(exc))
    args.set = params
    if args.method not in CLUSTERING_METHODS:
        parser.error(f"--method must be one of {', '.join(sorted(CLUSTERING_METHODS))}, got {args.method!r}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m routing.offline", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("records", type=Path)
    common.add_argument("--embedder", default=DEFAULT_EMBEDDER, help=f"default: {DEFAULT_EMBEDDER}, the platform's")
    common.add_argument("--cache", type=Path, default=default_cache(), help="embedding cache (sqlite)")
    ev = sub.add_parser("evaluate", parents=[common], help="compare routers and baselines on the test split")
    ev.add_argument("--seeds", default=str(DEFAULT_SEED),
                    help=f"comma-separated; the paper's five: {','.join(str(s) for s in SEEDS)}")
    ev.add_argument("--seed", type=int, help="one seed (the same as --seeds SEED)")
    ev.add_argument("--resplit", action="store_true",
                    help="redraw every dataset's train/test split per seed, also where the file carries splits")
    ev.add_argument("--test-fraction", type=float, default=0.3, help="share of each dataset drawn as test (0.3)")
    ev.add_argument("--router", default="auto",
                    help=f"auto (chosen by CV on train among the default candidates) or one of {', '.join(ROUTERS)}")
    ev.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                    help="a parameter of --router, e.g. --set shrinkage=16 (repeatable)")
    ev.add_argument("--k", type=int, default=DEFAULT_K)
    ev.add_argument("--method", default="kmeans")
    ev.add_argument("--top-n", type=int, default=1)
    ev.add_argument("--json", type=Path)
    sw = sub.add_parser("sweep", parents=[common], help="K sweep and ablations, with plots")
    sw.add_argument("--shrinkage", default="auto", help="pseudo-queries toward the overall mean, or 'auto' (CV)")
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
        check_evaluate_args(parser, args)
        result = command_evaluate(args)
        if args.json:
            args.json.write_text(json.dumps(result, indent=2))
    else:
        command_sweep(args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
