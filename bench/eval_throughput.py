"""Throughput of the evaluation engine against a server with a fixed delay and a fixed number of slots.

The ideal request rate of such a server is slots / delay. This script starts the fault server of the
tests as its own process (`python -m tests.support.fault_server --delay D --slots S`), then in this
process, on the embedded PostgreSQL (database `avengers_bench`, dropped afterwards):

1. baseline: the bare client, `max_concurrency` threads calling `complete()` back to back (no database);
2. engine: a real evaluation run executed by a lane, exactly as a Celery worker runs it: claim batches,
   plan, call, grade, upsert every response, heartbeat, mark batches done.

It prints both rates and their ratios to the ideal rate. Usage:

    .venv/bin/python bench/eval_throughput.py [--delay 0.25] [--slots 16] [--queries 960] [--batch-size 100]
"""
from __future__ import annotations

import argparse
import concurrent.futures as futures
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def start_server(delay: float, slots: int) -> tuple[subprocess.Popen[str], str]:
    process = subprocess.Popen(
        [sys.executable, "-m", "tests.support.fault_server", "--delay", str(delay), "--slots", str(slots)],
        cwd=REPO, stdout=subprocess.PIPE, text=True,
    )
    assert process.stdout is not None
    line = process.stdout.readline().strip()
    if not line.startswith("ready "):
        process.kill()
        raise SystemExit(f"the fault server did not start: {line!r}")
    return process, line.split(" ", 1)[1]


def baseline(base_url: str, slots: int, n: int) -> float:
    from evaluation.core.generation import ChatRequest
    from evaluation.providers import OpenAIChatClient

    client = OpenAIChatClient(base_url=base_url, max_concurrency=slots)
    requests = [ChatRequest(model="fault-model", messages=({"role": "user", "content": f"q{i}"},)) for i in range(n)]
    started = time.perf_counter()
    with futures.ThreadPoolExecutor(max_workers=slots) as pool:
        for _ in pool.map(client.complete, requests):
            pass
    return n / (time.perf_counter() - started)


def engine_run(base_url: str, slots: int, n: int, batch_size: int) -> tuple[float, int]:
    from evaluation.runs import lanes, services
    from evaluation.models import Dataset, LanguageModel, ModelResponse, Query

    dataset = Dataset.objects.create(name=f"bench-{os.getpid()}", split_seed=1)
    Query.objects.bulk_create(
        Query(dataset=dataset, external_id=f"q{i}", text=f"Question {i}: what is six times seven?", text_hash=str(i),
              gold="42", task_type="qa", split="train", split_source="file")
        for i in range(n)
    )
    model = LanguageModel.objects.create(name=f"bench-model-{os.getpid()}", base_url=base_url,
                                         served_model_id="fault-model", max_concurrency=slots)
    run = services.evaluation_run_create(dataset=dataset, models=[model], samples=1, batch_size=batch_size, queue=False)
    started = time.perf_counter()
    lanes.evaluation_lane_run(run_id=run.pk, model_id=model.pk, client_factory=lanes.client_for_model)
    elapsed = time.perf_counter() - started
    stored = ModelResponse.objects.filter(model=model, error="").count()
    return stored / elapsed, stored


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--delay", type=float, default=0.25, help="seconds the server takes per request")
    parser.add_argument("--slots", type=int, default=16, help="requests the server serves at once")
    parser.add_argument("--queries", type=int, default=960)
    parser.add_argument("--batch-size", type=int, default=100)
    args = parser.parse_args()

    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
    os.environ["AVENGERS_DB_NAME"] = "avengers_bench"
    import django

    django.setup()
    from django.core.management import call_command
    from django.db import connection

    call_command("migrate", verbosity=0)
    ideal = args.slots / args.delay
    server, base_url = start_server(args.delay, args.slots)
    try:
        bare = baseline(base_url, args.slots, args.queries)
        rate, stored = engine_run(base_url, args.slots, args.queries, args.batch_size)
    finally:
        server.terminate()
        server.wait(timeout=10)
        host = connection.settings_dict["HOST"]
        connection.close()
        import psycopg

        with psycopg.connect(host=host, user="postgres", dbname="postgres", autocommit=True) as admin:
            admin.execute("DROP DATABASE IF EXISTS avengers_bench")
    assert stored == args.queries, f"only {stored} of {args.queries} responses were stored"
    print(f"machine: {platform.node()} {platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}")
    print(f"server: {args.slots} slots x {args.delay} s per request -> ideal {ideal:.1f} requests/s")
    print(f"{'pass':<40} {'requests/s':>11} {'of ideal':>9}")
    print(f"{'bare client (threads, no database)':<40} {bare:>11.1f} {bare / ideal:>9.1%}")
    print(f"{'engine (lane: plan, call, grade, store)':<40} {rate:>11.1f} {rate / ideal:>9.1%}")
    print(f"engine / bare client: {rate / bare:.3f}")


if __name__ == "__main__":
    main()
