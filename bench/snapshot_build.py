"""Time to build a router snapshot as the number of queries grows, and where the time goes.

Synthetic queries with real-sized embeddings (384 dimensions, unit length, drawn around 64 hidden
topics) and 9 models whose per-query scores depend on the topic, stored as the platform stores them
(QueryEmbedding rows in pgvector, ModelResponse rows). For each size N the script builds a K=64 snapshot
through the real service (`routing.building.snapshot_build`), with the shrinkage fixed (no CV) and, for
sizes up to 10k, with "auto" (5-fold CV), and prints the stages' seconds from `RouterSnapshot.timings`.
It uses a throw-away database `avengers_bench_snapshots` on the embedded PostgreSQL, dropped at the end.

    .venv/bin/python bench/snapshot_build.py [--sizes 1000,10000,100000] [--test 1000]
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
DB_NAME = "avengers_bench_snapshots"
DIM, TOPICS, MODELS = 384, 64, 9
STAGES = ("embedding_s", "reading_s", "clustering_s", "shrinkage_s", "profiling_s", "heldout_s", "layout_s",
          "saving_s", "total_s")


def populate(n: int, n_test: int, seed: int) -> tuple[list, list]:  # type: ignore[type-arg]
    """Store n train + n_test synthetic queries with vectors and 9 models' scores; return datasets and models."""
    from django.db import connection

    from evaluation.models import Dataset, LanguageModel, ModelResponse, Query, QueryEmbedding

    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(TOPICS, DIM))
    skill = rng.uniform(0.2, 0.9, size=(TOPICS, MODELS))  # each model's accuracy per hidden topic
    models = [LanguageModel.objects.get_or_create(name=f"synthetic-{j}")[0] for j in range(MODELS)]
    dataset = Dataset.objects.create(name=f"synthetic-{n}", split_seed=seed)
    total = n + n_test
    topics = rng.integers(0, TOPICS, size=total)
    vectors = centres[topics] + rng.normal(scale=1.2, size=(total, DIM))
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    queries = Query.objects.bulk_create(
        [Query(dataset=dataset, external_id=str(i), text=f"synthetic query {i} of topic {topics[i]}",
               text_hash=f"{n}-{i}", split="train" if i < n else "test", split_source="file")
         for i in range(total)], batch_size=5000)
    correct = rng.random((total, MODELS)) < skill[topics]
    # COPY, not the ORM: a million response rows through bulk_create take minutes and are not what is measured.
    with connection.cursor() as cursor:
        raw = cursor.cursor
        with raw.copy(f"COPY {QueryEmbedding._meta.db_table} (query_id, embedder, dimensions, vector, created_at) "
                      "FROM STDIN") as copy:
            for query, vector in zip(queries, vectors):
                copy.write_row((query.pk, "minilm", DIM, "[" + ",".join(f"{x:.6f}" for x in vector) + "]", "now"))
        columns = ("model_id, query_id, sample_index, params_key, source, prompt, text, params, finish_reason, "
                   "error, error_kind, score, correct, grade_reason, cached, created_at, updated_at")
        with raw.copy(f"COPY {ModelResponse._meta.db_table} ({columns}) FROM STDIN") as copy:
            for i, query in enumerate(queries):
                for j, model in enumerate(models):
                    right = bool(correct[i, j])
                    copy.write_row((model.pk, query.pk, 0, "", "imported", "", "", "{}", "", "", "", float(right),
                                    right, "imported score", False, "now", "now"))
    return [dataset], models


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1000,10000,100000", help="train queries per run, comma-separated")
    parser.add_argument("--test", type=int, default=1000, help="test queries per run (held-out evaluation)")
    parser.add_argument("--auto-up-to", type=int, default=10000, help="also time shrinkage=auto up to this size")
    args = parser.parse_args()
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
    os.environ["AVENGERS_DB_NAME"] = DB_NAME
    import django

    django.setup()
    from django.core.management import call_command
    from django.db import connection

    from routing import building, services

    call_command("migrate", verbosity=0)
    from evaluation.models import Dataset
    from routing.models import RouterSnapshot

    RouterSnapshot.objects.all().delete()  # what an interrupted earlier run left behind
    Dataset.objects.filter(name__startswith="synthetic-").delete()
    print(f"machine: {platform.node()} {platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}, "
          f"numpy {np.__version__}")
    header = f"{'train':>7} {'shrinkage':>9} " + " ".join(f"{s.removesuffix('_s'):>10}" for s in STAGES)
    print(header)
    try:
        for n in (int(s) for s in args.sizes.split(",")):
            started = time.perf_counter()
            datasets, models = populate(n, args.test, seed=n)
            setup = time.perf_counter() - started
            for shrinkage in (["32", "auto"] if n <= args.auto_up_to else ["32"]):
                snapshot = services.snapshot_create(datasets=datasets, models=models, k=64, seed=42,
                                                    shrinkage=shrinkage, queue=False)
                outcome = building.snapshot_build(snapshot_id=snapshot.pk)
                snapshot.refresh_from_db()
                if outcome != "built":
                    raise SystemExit(f"the build of {n} queries failed: {snapshot.message}")
                print(f"{n:>7} {shrinkage:>9} " + " ".join(f"{snapshot.timings.get(s, 0.0):>10.2f}" for s in STAGES),
                      flush=True)
            print(f"{'':>7} (storing the {n + args.test} synthetic queries, vectors and {MODELS} models' scores took "
                  f"{setup:.1f} s; not part of the build)", flush=True)
    finally:
        host = connection.settings_dict["HOST"]
        connection.close()
        import psycopg

        with psycopg.connect(host=host, user="postgres", dbname="postgres", autocommit=True) as admin:
            admin.execute(f"DROP DATABASE IF EXISTS {DB_NAME}")


if __name__ == "__main__":
    main()
