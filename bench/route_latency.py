"""Latency and throughput of POST /api/v1/route served by gunicorn, against an empty endpoint of the same server.

Target (issue 6): on 2 cores, the latency /api/v1/route adds over an empty endpoint of the same server is at
most 3 ms at the median and 10 ms at p99, embedding included, and it sustains at least 300 decisions/s for
60 s with no errors.

What it does, all on this machine:

1. A throw-away data folder (AVENGERS_DATA_DIR in a temp folder, so its own embedded PostgreSQL): migrate,
   import the real LLMRouter records (`../shared/data/llmrouter/records.jsonl`: LLMRouter, ulab-uiuc,
   MIT licence; see shared/data/README.md), build and activate a K=64 snapshot (vectors come from the
   embedding cache in ~/.cache/avengers when present), create an API token with a rate limit above the load.
2. Serve the app with gunicorn (`bench.settings`: the app's settings, DEBUG off, plus
   `POST /api/v1/bench-empty`, the route view's class answering `{}` after authentication, permissions,
   throttles and parsing) on 127.0.0.1 with 2 workers.
3. Drive load from another process with `wrk` (installed with apt-get when missing and root; else a small
   Python load generator): every request POSTs a distinct real query, the test split's queries in turn,
   later passes with " (variant N)" appended, so no cache of query vectors can answer.
4. Latency: both endpoints at the same few connections, in alternating rounds; the added ms at p50 and p99
   and their ratio. Throughput: each endpoint for --duration seconds at enough connections to saturate
   the workers, with every error (non-2xx, socket errors, timeouts) counted. CPU seconds per request of the
   server, the database and the load tool come from /proc.

Prints a summary, writes bench/results/route_latency-<UTC time>.json, exits 1 on any error or failed request.

    .venv/bin/python bench/route_latency.py [--duration 60] [--quick] [--worker-class gthread --threads 4]
        [--latency-connections 1,4] [--throughput-connections 8] [--profile-seconds 20 --py-spy PATH]
        [--baseline refused]

With --url and --token it measures a server that is already running instead, e.g. the one `make demo` or
`make run` starts (steps 1 and 2 skipped). That server has no empty endpoint: the baseline is then a refused
request, POST /api/v1/route with `"snapshot": 0` (authentication, permissions, throttles, parsing and the
input check, then a 400), and `--baseline refused` measures the same baseline here for comparison. Start the
server with AVENGERS_RATE_LIMIT_PER_MINUTE=0, or the token's rate limit answers 429s:

    AVENGERS_RATE_LIMIT_PER_MINUTE=0 make demo     # then, in another terminal:
    .venv/bin/python bench/route_latency.py --url http://127.0.0.1:8000 --token "$(cat .data/demo-token)"
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
RECORDS = REPO.parent / "shared" / "data" / "llmrouter" / "records.jsonl"
RESULTS = REPO / "bench" / "results"
ROUTE, EMPTY, STATS = "/api/v1/route", "/api/v1/bench-empty", "/api/v1/bench-stats"
# The refused baseline: the route endpoint with a body its input check refuses (a 400), sent with every query.
REFUSED_EXTRA = ', "snapshot": 0'
TARGET_P50_MS, TARGET_P99_MS, TARGET_RPS = 3.0, 10.0, 300.0
CLK_TCK = os.sysconf("SC_CLK_TCK")

# wrk script. Everything comes from the environment: wrk's `done` runs in a Lua state that never sees
# init()'s arguments. Each thread takes every BENCH_THREADS-th request number; request n sends test
# query n mod Q, with " (variant P)" appended from its second pass on (P also counts the phase), so no two
# requests of a run carry the same text. `done` writes the latency histogram (µs -> count), so that rounds
# can be merged exactly.
WRK_LUA = r"""
local queries = {}
local counter = 0
local phase = tonumber(os.getenv("BENCH_PHASE"))
local extra = os.getenv("BENCH_EXTRA") or ""
local nthreads = tonumber(os.getenv("BENCH_THREADS"))
local expected = tonumber(os.getenv("BENCH_EXPECT") or "200")
local threads = {}
statuses = {}
first_error = ""

for line in io.lines(os.getenv("BENCH_QUERIES")) do
  queries[#queries + 1] = line:sub(1, -2)  -- a JSON string literal without its closing quote
end
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer " .. os.getenv("BENCH_TOKEN")

function setup(thread)
  thread:set("tid", #threads)
  table.insert(threads, thread)
end

function request()
  local n = counter * nthreads + tid
  counter = counter + 1
  local pass = phase * 1000 + math.floor(n / #queries)
  local text = queries[(n % #queries) + 1]
  if pass > 0 then text = text .. " (variant " .. pass .. ")" end
  return wrk.format(nil, nil, nil, '{"query": ' .. text .. '"' .. extra .. '}')
end

function response(status, headers, body)
  local key = tostring(status)
  statuses[key] = (statuses[key] or 0) + 1
  if status ~= expected and first_error == "" then first_error = string.sub(body or "", 1, 300) end
end

function done(summary, latency, requests)
  local out = io.open(os.getenv("BENCH_OUT"), "w")
  local merged = {}
  local first = ""
  for _, thread in ipairs(threads) do
    for key, count in pairs(thread:get("statuses") or {}) do merged[key] = (merged[key] or 0) + count end
    local err = thread:get("first_error")
    if first == "" and err then first = err end
  end
  out:write(string.format("summary %d %d %d %d %d %d %d %d\n", summary.duration, summary.requests,
    summary.bytes, summary.errors.connect, summary.errors.read, summary.errors.write,
    summary.errors.status, summary.errors.timeout))
  for key, count in pairs(merged) do out:write(string.format("status %s %d\n", key, count)) end
  for i = 1, #latency do
    local value, count = latency(i)
    out:write(string.format("latency %d %d\n", value, count))
  end
  out:write("first_error " .. string.gsub(first, "\n", " ") .. "\n")
  out:close()
end
"""


# ----------------------------------------------------------------------------------------------- machine


def machine() -> dict[str, Any]:
    cpu = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        mem_gb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    except (ValueError, OSError):
        mem_gb = 0.0
    versions = {}
    for name in ("django", "djangorestframework", "gunicorn", "onnxruntime", "tokenizers", "numpy", "psycopg"):
        try:
            from importlib.metadata import version

            versions[name] = version(name)
        except Exception:  # noqa: BLE001 - a missing package is reported as such
            versions[name] = "missing"
    return {"nproc": os.cpu_count(), "cpu": cpu, "memory_gb": round(mem_gb, 1), "platform": platform.platform(),
            "python": platform.python_version(), "versions": versions,
            "date_utc": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "loadavg_at_start": list(os.getloadavg())}


class CpuMeter:
    """CPU seconds of process trees (gunicorn, the database, the load tool) and of the whole machine."""

    @staticmethod
    def _proc_seconds(pid: int, children_too: bool) -> float:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            return 0.0
        # Fields after the command: state is [0]; utime, stime, cutime, cstime are [11:15].
        ticks = int(fields[11]) + int(fields[12])
        if children_too:
            ticks += int(fields[13]) + int(fields[14])  # exited children it waited for (a closed DB connection)
        return ticks / CLK_TCK

    @staticmethod
    def children(pid: int) -> list[int]:
        found = []
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                try:
                    ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
                except (OSError, IndexError, ValueError):
                    continue
                if ppid == pid:
                    found.append(int(entry.name))
        return found

    def tree_seconds(self, pid: int | None) -> float:
        if pid is None:
            return 0.0
        return self._proc_seconds(pid, True) + sum(self._proc_seconds(c, False) for c in self.children(pid))

    @staticmethod
    def machine_busy_idle() -> tuple[float, float]:
        values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
        idle = values[3] + values[4]
        return (sum(values) - idle) / CLK_TCK, idle / CLK_TCK


# ----------------------------------------------------------------------------------------------- setup


def prepare(data_dir: Path, embedder: str = "") -> dict[str, Any]:
    """Migrate, import the records, build and activate a K=64 snapshot, create a token; return what serving needs."""
    import django

    django.setup()
    from django.contrib.auth import get_user_model
    from django.core.management import call_command
    from django.db import connections

    from avengers_web.models import ApiToken
    from avengers_web.services import api_token_create
    from evaluation.models import Dataset, LanguageModel
    from evaluation.services import dataset_import_file
    from routing import building
    from routing import services as routing_services
    from routing.models import RouterSnapshot

    timings: dict[str, float] = {}
    mark = time.perf_counter()
    call_command("migrate", interactive=False, verbosity=0)
    timings["migrate_s"] = time.perf_counter() - mark
    mark = time.perf_counter()
    summary = dataset_import_file(data=RECORDS.read_bytes(), filename=RECORDS.name)
    timings["import_s"] = time.perf_counter() - mark
    print(f"  imported {summary.queries_added} queries, {summary.responses_added} model results "
          f"({timings['import_s']:.1f} s)", flush=True)
    user = get_user_model().objects.create_superuser(username="bench", password="bench-password", email="")
    mark = time.perf_counter()
    snapshot = routing_services.snapshot_create(
        datasets=list(Dataset.objects.all()), models=list(LanguageModel.objects.all()), k=64, shrinkage=32.0,
        embedder=embedder or None, label="route latency bench", user=user, queue=False)
    building.snapshot_build(snapshot_id=snapshot.pk)
    snapshot.refresh_from_db()
    if snapshot.status != RouterSnapshot.Status.DONE:
        raise SystemExit(f"building the snapshot failed: {snapshot.message}")
    routing_services.snapshot_activate(snapshot=snapshot, user=user)
    timings["snapshot_s"] = time.perf_counter() - mark
    print(f"  snapshot v{snapshot.version} (K=64, {snapshot.embedder}) built and active "
          f"({timings['snapshot_s']:.1f} s)", flush=True)
    token, key = api_token_create(user=user, name="route latency bench")
    # Far above any rate this machine can reach, so the limit is checked on every request but never refuses.
    ApiToken.objects.filter(pk=token.pk).update(rate_limit_per_minute=1_000_000_000)
    connections.close_all()
    return {"token": key, "snapshot_id": snapshot.pk, "snapshot_version": snapshot.version, "timings": timings}


def test_queries() -> list[str]:
    queries = []
    with RECORDS.open(encoding="utf-8") as handle:
        for line in handle:
            record = json.loads(line)
            if record.get("split") == "test":
                queries.append(record["query"])
    return queries


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def post(url: str, token: str, body: dict[str, Any], timeout: float = 120.0) -> tuple[int, Any]:
    request = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST", headers={
        "Content-Type": "application/json", "Authorization": f"Bearer {token}"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.loads(response.read() or b"null")
    except urllib.error.HTTPError as error:
        payload = error.read()
        try:
            return error.code, json.loads(payload)
        except ValueError:
            return error.code, payload[:300].decode(errors="replace")


def start_gunicorn(env: dict[str, str], port: int, args: argparse.Namespace, log: Path) -> subprocess.Popen[bytes]:
    command = [sys.executable, "-m", "gunicorn", "config.wsgi:application", "--bind", f"127.0.0.1:{port}",
               "--workers", str(args.workers), "--worker-class", args.worker_class, "--log-level", "warning",
               "--timeout", "120", "--backlog", "2048", "--keep-alive", "30", "--chdir", str(REPO)]
    if args.worker_class == "gthread":
        command += ["--threads", str(args.threads)]
    if args.gunicorn_config:
        command += ["--config", str(Path(args.gunicorn_config).resolve())]
    return subprocess.Popen(command, cwd=REPO, env=env, stdout=log.open("ab"), stderr=subprocess.STDOUT,
                            start_new_session=True)


def wait_ready(base: str, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"gunicorn exited with code {process.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(base + STATS, timeout=5) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.3)
    raise SystemExit("gunicorn did not answer within 120 s")


# ----------------------------------------------------------------------------------------------- load


def ensure_wrk() -> str | None:
    found = shutil.which("wrk")
    if found:
        return found
    if os.geteuid() == 0 and shutil.which("apt-get"):
        print("  wrk is missing: apt-get install -y wrk", flush=True)
        subprocess.run(["apt-get", "install", "-y", "-q", "wrk"], check=False, stdout=subprocess.DEVNULL)
        found = shutil.which("wrk")
        if not found:
            subprocess.run(["apt-get", "update", "-q"], check=False, stdout=subprocess.DEVNULL)
            subprocess.run(["apt-get", "install", "-y", "-q", "wrk"], check=False, stdout=subprocess.DEVNULL)
            found = shutil.which("wrk")
    return found


class Phase:
    """One load run against one endpoint: its latency histogram, status codes and errors."""

    def __init__(self, name: str, path: str, connections: int, seconds: float) -> None:
        self.name, self.path, self.connections, self.seconds = name, path, connections, seconds
        self.histogram: Counter[int] = Counter()  # µs -> count
        self.statuses: Counter[str] = Counter()
        self.requests = 0
        self.duration_s = 0.0
        self.socket_errors: dict[str, int] = {"connect": 0, "read": 0, "write": 0, "timeout": 0}
        self.non_2xx = 0
        self.first_error = ""
        self.cpu: dict[str, float] = {}

    def merge(self, other: Phase) -> None:
        self.histogram.update(other.histogram)
        self.statuses.update(other.statuses)
        self.requests += other.requests
        self.duration_s += other.duration_s
        for key, value in other.socket_errors.items():
            self.socket_errors[key] += value
        self.non_2xx += other.non_2xx
        self.first_error = self.first_error or other.first_error
        for key, value in other.cpu.items():
            self.cpu[key] = self.cpu.get(key, 0.0) + value

    @property
    def errors(self) -> int:
        return self.non_2xx + sum(self.socket_errors.values())

    @property
    def rps(self) -> float:
        return self.requests / self.duration_s if self.duration_s else 0.0

    def percentile_ms(self, p: float) -> float:
        total = sum(self.histogram.values())
        if total == 0:
            return float("nan")
        rank = max(1, int(-(-p / 100.0 * total // 1)))  # ceil
        seen = 0
        for value in sorted(self.histogram):
            seen += self.histogram[value]
            if seen >= rank:
                return value / 1000.0
        return max(self.histogram) / 1000.0

    def as_dict(self) -> dict[str, Any]:
        out = {"endpoint": self.path, "connections": self.connections, "requests": self.requests,
               "seconds": round(self.duration_s, 2), "rps": round(self.rps, 1), "errors": self.errors,
               "non_2xx": self.non_2xx, "socket_errors": self.socket_errors, "statuses": dict(self.statuses),
               "p50_ms": round(self.percentile_ms(50), 3), "p90_ms": round(self.percentile_ms(90), 3),
               "p99_ms": round(self.percentile_ms(99), 3), "max_ms": round(self.percentile_ms(100), 3),
               # server, database, load tool, and the whole machine (other jobs included).
               "cpu_ms_per_request": {k.removesuffix("_busy_s"): round(v * 1000 / self.requests, 3)
                                      if self.requests else None
                                      for k, v in self.cpu.items() if k != "machine_idle_s"},
               "machine_idle_share": round(self.cpu.get("machine_idle_s", 0.0) / max(
                   self.cpu.get("machine_idle_s", 0.0) + self.cpu.get("machine_busy_s", 0.0), 1e-9), 3)}
        if self.first_error:
            out["first_error"] = self.first_error
        return out


class Runner:
    """Runs load phases with wrk (or the Python fallback) and meters CPU around them."""

    def __init__(self, base: str, token: str, queries_file: Path, work: Path, wrk: str | None,
                 gunicorn_pid: int, postgres_pid: int | None) -> None:
        self.base, self.token, self.queries_file, self.work, self.wrk = base, token, queries_file, work, wrk
        self.gunicorn_pid, self.postgres_pid = gunicorn_pid, postgres_pid
        self.phase_number = 0
        self.meter = CpuMeter()
        (work / "load.lua").write_text(WRK_LUA)

    def run(self, name: str, path: str, connections: int, seconds: float, threads: int = 1, extra: str = "",
            expect: int = 200) -> Phase:
        """Load ``path`` with the queries (``extra`` appended to each JSON body); any status but ``expect`` is an error."""
        self.phase_number += 1
        phase = Phase(name, path, connections, seconds)
        out = self.work / f"phase-{self.phase_number}.txt"
        env = {**os.environ, "BENCH_PHASE": str(self.phase_number), "BENCH_THREADS": str(threads),
               "BENCH_QUERIES": str(self.queries_file), "BENCH_TOKEN": self.token, "BENCH_OUT": str(out),
               "BENCH_EXTRA": extra, "BENCH_EXPECT": str(expect)}
        server0, db0 = self.meter.tree_seconds(self.gunicorn_pid), self.meter.tree_seconds(self.postgres_pid)
        busy0, idle0 = self.meter.machine_busy_idle()
        if self.wrk:
            command = [self.wrk, "-t", str(threads), "-c", str(connections), "-d", f"{seconds:g}s",
                       "--timeout", "10s", "-s", str(self.work / "load.lua"), self.base + path]
        else:
            command = [sys.executable, str(Path(__file__).resolve()), "--load-generator", self.base + path,
                       str(connections), str(seconds)]
        load = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        load_cpu = 0.0
        while load.poll() is None:
            load_cpu = max(load_cpu, self.meter._proc_seconds(load.pid, False))
            time.sleep(0.2)
        output = load.stdout.read().decode(errors="replace") if load.stdout else ""
        if load.returncode != 0 or not out.exists():
            raise SystemExit(f"the load run failed ({load.returncode}):\n{output[-3000:]}")
        busy1, idle1 = self.meter.machine_busy_idle()
        phase.cpu = {"server": self.meter.tree_seconds(self.gunicorn_pid) - server0,
                     "database": self.meter.tree_seconds(self.postgres_pid) - db0,
                     "load_tool": load_cpu, "machine_busy_s": busy1 - busy0, "machine_idle_s": idle1 - idle0}
        for line in out.read_text(errors="replace").splitlines():
            kind, _, rest = line.partition(" ")
            if kind == "summary":
                duration, requests, _bytes, connect, read, write, status, timeout = (int(v) for v in rest.split())
                phase.duration_s, phase.requests = duration / 1e6, requests
                phase.socket_errors = {"connect": connect, "read": read, "write": write, "timeout": timeout}
                phase.non_2xx = status
            elif kind == "status":
                code, count = rest.split()
                phase.statuses[code] += int(count)
            elif kind == "latency":
                value, count = rest.split()
                phase.histogram[int(float(value))] += int(count)
            elif kind == "first_error":
                phase.first_error = rest.strip()
        # wrk counts only status > 399 as errors; any status but the expected one is one here.
        phase.non_2xx = sum(c for code, c in phase.statuses.items() if code != str(expect))
        return phase


def load_generator(url: str, connections: int, seconds: float) -> None:
    """Fallback when wrk is missing: closed-loop keep-alive clients in threads; same output file as the Lua."""
    import http.client
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    lines = [line.rstrip("\n")[:-1] for line in Path(os.environ["BENCH_QUERIES"]).read_text().splitlines()]
    phase = int(os.environ["BENCH_PHASE"])
    extra, expect = os.environ.get("BENCH_EXTRA", ""), int(os.environ.get("BENCH_EXPECT", "200"))
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {os.environ['BENCH_TOKEN']}"}
    lock = threading.Lock()
    histogram: Counter[int] = Counter()
    statuses: Counter[str] = Counter()
    errors = Counter({"connect": 0, "read": 0, "write": 0, "timeout": 0})
    first_error = [""]
    counter = iter(range(10**12))
    stop = time.monotonic() + seconds

    def client() -> None:
        connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
        while time.monotonic() < stop:
            with lock:
                n = next(counter)
            text = lines[n % len(lines)]
            pass_ = phase * 1000 + n // len(lines)
            if pass_ > 0:
                text += f" (variant {pass_})"
            body = '{"query": ' + text + '"' + extra + '}'
            started = time.perf_counter()
            try:
                connection.request("POST", parts.path, body=body.encode(), headers=headers)
                response = connection.getresponse()
                payload = response.read()
            except TimeoutError:
                with lock:
                    errors["timeout"] += 1
                connection.close()
                continue
            except OSError:
                with lock:
                    errors["read"] += 1
                connection.close()
                continue
            elapsed = int((time.perf_counter() - started) * 1e6)
            with lock:
                histogram[elapsed] += 1
                statuses[str(response.status)] += 1
                if response.status != expect and not first_error[0]:
                    first_error[0] = payload[:300].decode(errors="replace").replace("\n", " ")

    started = time.perf_counter()
    workers = [threading.Thread(target=client) for _ in range(connections)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    duration = int((time.perf_counter() - started) * 1e6)
    non_2xx = sum(c for code, c in statuses.items() if int(code) > 399)
    with open(os.environ["BENCH_OUT"], "w") as out:
        out.write(f"summary {duration} {sum(statuses.values())} 0 {errors['connect']} {errors['read']} "
                  f"{errors['write']} {non_2xx} {errors['timeout']}\n")
        for code, count in statuses.items():
            out.write(f"status {code} {count}\n")
        for value, count in histogram.items():
            out.write(f"latency {value} {count}\n")
        out.write(f"first_error {first_error[0]}\n")


# ----------------------------------------------------------------------------------------------- profile

# Where a py-spy sample goes, by its innermost frame that matches (leaf first): what the CPU is doing.
WHAT_RULES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("embedding: ONNX Runtime run", ("onnxruntime",)),
    ("embedding: tokenizer", ("tokenizers", "encode_batch")),
    ("database driver (psycopg)", ("psycopg",)),
    ("embedding: pooling, numpy", ("routing/core/embedding/", "routing/core/batching.py")),
    ("routing in memory (core)", ("routing/core/",)),
    ("decision log", ("routing/serving/decision_log.py",)),
    ("routing service (routing/serving/)", ("routing/serving/service.py", "routing/serving/tables.py",
                                             "routing/serving/embedding.py")),
    ("DRF", ("rest_framework/",)),
    ("Django", ("django/",)),
    ("gunicorn", ("gunicorn/",)),
)
# And by the innermost step of the request it belongs to.
STEP_RULES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("decision log (background thread)", ("_run (routing/serving/decision_log.py",)),
    ("decision log: submit", ("submit (routing/serving/decision_log.py",)),
    ("embed the query", ("embed_query (", "(routing/core/embedding/", "(routing/core/batching.py")),
    ("nearest centroid, candidates", ("_route (routing/serving/service.py", "(routing/core/dispatch.py")),
    ("models, availability", ("language_models (routing/serving/tables.py", "_availability",
                              "availability (routing/serving/service.py")),
    ("decision JSON", ("decision_body (", "decision (routing/serving/service.py")),
    ("token authentication", ("authenticate (avengers_web/", "api_token_authenticate")),
    ("rate limit (throttle)", ("avengers_web/throttling.py",)),
    ("input validation", ("is_valid (rest_framework/serializers.py",)),
    ("body parsing", ("_parse (rest_framework/request.py",)),
    ("response rendering", ("rendered_content (", "render (rest_framework/renderers.py")),
    ("database connect/close", ("connect (psycopg", "close_old_connections", "_close (django/db")),
    ("Django middleware, routing", ("django/core/handlers", "django/middleware", "django/urls")),
    ("gunicorn I/O", ("gunicorn/",)),
)


# Leaf frames of a thread that waits (py-spy's own idle detection does not work on every kernel).
IDLE_LEAVES = ("Condition.wait (threading.py", "Event.wait (threading.py", "select (selectors.py",
               "_worker (concurrent/futures/thread.py", "Queue.get (queue.py", "SyncWorker.wait (gunicorn",
               "wait_for_and_dispatch_events (gunicorn", "ThreadWorker.run (gunicorn", "sleep (")


def classify(frames: list[str], rules: tuple[tuple[str, tuple[str, ...]], ...]) -> str:
    for frame in reversed(frames):  # leaf first
        for name, needles in rules:
            if any(needle in frame for needle in needles):
                return name
    return "other"


def summarise_profile(path: Path) -> dict[str, Any]:
    what: Counter[str] = Counter()
    step: Counter[str] = Counter()
    total = 0
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        frames = stack.split(";")
        n = int(count)
        if any(needle in frames[-1] for needle in IDLE_LEAVES):
            continue
        total += n
        what[classify(frames, WHAT_RULES)] += n
        step[classify(frames, STEP_RULES)] += n
    share = {"what": {k: round(v / total, 4) for k, v in what.most_common()} if total else {},
             "step": {k: round(v / total, 4) for k, v in step.most_common()} if total else {}}
    return {"samples": total, **share}


def profile_worker(runner: Runner, pyspy: str, gunicorn_pid: int, path: str, connections: int,
                   seconds: float, work: Path) -> dict[str, Any] | None:
    """Record one worker with py-spy (Python frames; waiting threads dropped) while route load runs."""
    workers = sorted(CpuMeter.children(gunicorn_pid))
    if not workers:
        return None
    out = work / "py-spy.txt"
    spy = subprocess.Popen([pyspy, "record", "--pid", str(workers[0]), "--duration", f"{int(seconds)}",
                            "--rate", "200", "--format", "raw", "--output", str(out)],
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    phase = runner.run("profile", path, connections, seconds + 1)
    try:
        _, err = spy.communicate(timeout=seconds + 120)
    except subprocess.TimeoutExpired:
        spy.kill()
        return None
    if spy.returncode != 0 or not out.exists():
        print(f"  py-spy failed: {err.decode(errors='replace')[-500:]}")
        return None
    summary = summarise_profile(out)
    summary["worker_pid"] = workers[0]
    summary["load_rps_while_profiling"] = round(phase.rps, 1)
    return summary


# ----------------------------------------------------------------------------------------------- report


def postgres_pid(data_dir: Path) -> int | None:
    try:
        return int((data_dir / "pg" / "postmaster.pid").read_text().splitlines()[0])
    except (OSError, ValueError, IndexError):
        return None


def listener_pid(url: str) -> int | None:
    """Return the pid of the process tree that listens on the URL's port here (a gunicorn master), if any."""
    from urllib.parse import urlsplit

    import psutil

    port = urlsplit(url).port or 80
    try:
        pids = {c.pid for c in psutil.net_connections("tcp") if c.status == psutil.CONN_LISTEN
                and c.laddr and c.laddr.port == port and c.pid}
    except psutil.AccessDenied:
        return None
    # The master and its workers share the socket: the master is the one whose parent does not.
    roots = [pid for pid in pids if psutil.Process(pid).ppid() not in pids]
    return roots[0] if len(roots) == 1 else None


def fmt(value: float) -> str:
    return f"{value:.2f}"


def report(result: dict[str, Any]) -> bool:
    ok = True
    baseline = result.get("baseline", "empty")
    print(f"\n== Latency: route vs {baseline} at the same connections (closed loop, merged rounds)"
          + ("; refused: POST /api/v1/route with a body it refuses (400)" if baseline == "refused" else ""))
    print(f"{'conns':>5} {'endpoint':<10} {'requests':>8} {'req/s':>8} {'p50 ms':>8} {'p90 ms':>8} {'p99 ms':>8} "
          f"{'max ms':>8} {'errors':>6}")
    for entry in result["latency"]:
        for key in ("empty", "route"):
            p = entry[key]
            print(f"{entry['connections']:>5} {key:<10} {p['requests']:>8} {p['rps']:>8.1f} {fmt(p['p50_ms']):>8} "
                  f"{fmt(p['p90_ms']):>8} {fmt(p['p99_ms']):>8} {fmt(p['max_ms']):>8} {p['errors']:>6}")
        added = entry["added"]
        met = added["p50_ms"] <= TARGET_P50_MS and added["p99_ms"] <= TARGET_P99_MS
        print(f"{'':>5} added      p50 +{fmt(added['p50_ms'])} ms (x{added['p50_ratio']:.2f}), "
              f"p99 +{fmt(added['p99_ms'])} ms (x{added['p99_ratio']:.2f}); target +{TARGET_P50_MS:g} / "
              f"+{TARGET_P99_MS:g} ms: {'met' if met else 'MISSED'}")
    print("\n== Throughput: each endpoint for the whole duration at saturating connections")
    print(f"{'endpoint':<10} {'conns':>5} {'seconds':>7} {'requests':>8} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} "
          f"{'errors':>6} {'server':>8} {'db':>6} {'wrk':>6} {'idle':>5}")
    for key in ("empty", "route"):
        p = result["throughput"][key]
        cpu = p["cpu_ms_per_request"]
        print(f"{key:<10} {p['connections']:>5} {p['seconds']:>7.1f} {p['requests']:>8} {p['rps']:>8.1f} "
              f"{fmt(p['p50_ms']):>8} {fmt(p['p99_ms']):>8} {p['errors']:>6} {fmt(cpu['server'] or 0):>8} "
              f"{fmt(cpu['database'] or 0):>6} {fmt(cpu['load_tool'] or 0):>6} {p['machine_idle_share']:>5.0%}")
    print("   (server, db, wrk: CPU ms per request of the gunicorn processes, PostgreSQL, the load tool; "
          "idle: share of the machine's CPU left idle)")
    profile = result.get("profile")
    if profile:
        busy_ms = 1000.0 * result["args"]["workers"] / max(profile["load_rps_while_profiling"], 1e-9)
        print(f"\n== Where one worker's time goes under route load (py-spy, {profile['samples']} samples of busy "
              f"Python threads: wall time, waits for the database or for a core included; ms: share x "
              f"{busy_ms:.1f} ms, a saturated worker's time per request)")
        for title, key in (("by step", "step"), ("by code", "what")):
            print(f"  {title}:")
            for name, share in profile[key].items():
                print(f"    {name:<36} {share:>6.1%} {share * busy_ms:>7.2f} ms")
    route = result["throughput"]["route"]
    ratio = route["rps"] / max(result["throughput"]["empty"]["rps"], 1e-9)
    met = route["rps"] >= TARGET_RPS and route["errors"] == 0 and route["seconds"] >= 59.5
    print(f"route sustained {route['rps']:.1f} decisions/s ({ratio:.2f}x the {baseline} baseline) for "
          f"{route['seconds']:.0f} s with {route['errors']} errors; target {TARGET_RPS:g}/s for 60 s, no errors: "
          f"{'met' if met else 'MISSED'}")
    for entry in [*result["latency"], result["throughput"]]:
        for key in ("empty", "route"):
            p = entry[key]
            if p["errors"]:
                ok = False
                print(f"ERRORS on {key}: statuses {p['statuses']}, sockets {p['socket_errors']}; first: "
                      f"{p.get('first_error', '')[:200]}")
    return ok


# ----------------------------------------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of each throughput run (default 60)")
    parser.add_argument("--quick", action="store_true", help="short runs (10 s throughput, 4 s latency rounds)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--worker-class", default="sync", choices=["sync", "gthread"],
                        help="sync (default: measured fastest with the local ONNX embedder) or gthread")
    parser.add_argument("--threads", type=int, default=4, help="threads per gthread worker")
    parser.add_argument("--latency-connections", default="1,4", help="comma-separated connection counts")
    parser.add_argument("--latency-seconds", type=float, default=10.0, help="seconds per endpoint and round")
    parser.add_argument("--rounds", type=int, default=2, help="alternating empty/route rounds per connection count")
    parser.add_argument("--throughput-connections", type=int, default=8)
    parser.add_argument("--profile-seconds", type=float, default=20.0,
                        help="after the runs, record one worker with py-spy for this long under route load (0: off)")
    parser.add_argument("--py-spy", default=shutil.which("py-spy") or "", help="py-spy binary (default: on PATH)")
    parser.add_argument("--no-wrk", action="store_true", help="use the Python load generator even if wrk is there")
    parser.add_argument("--keep", action="store_true", help="keep the temp folder (the database is stopped anyway)")
    parser.add_argument("--embedder", default="",
                        help="the snapshot's embedder (default: the platform's, AVENGERS_EMBEDDER)")
    parser.add_argument("--conn-max-age", type=int, default=60,
                        help="DB_CONN_MAX_AGE of the server (docker/.env.example: 60; 0: a connection per request)")
    parser.add_argument("--gunicorn-config", default="",
                        help="a gunicorn config file to add (e.g. server hooks for an experiment)")
    parser.add_argument("--route-path", default=ROUTE, help="the endpoint measured against the empty one")
    parser.add_argument("--hold", type=float, default=0.0,
                        help="after the runs, keep the server up this many seconds (to attach a profiler)")
    parser.add_argument("--baseline", choices=["empty", "refused"], default="empty",
                        help="what the route endpoint is compared with: the empty endpoint (default) or a request "
                             "the route endpoint refuses (400), the baseline any server has")
    parser.add_argument("--url", default="",
                        help="measure the server already running there (e.g. http://127.0.0.1:8000, from `make demo` "
                             "or `make run`) instead of starting one; needs --token; the baseline is then refused")
    parser.add_argument("--token", default="", help="an API token of that server (`make demo`: .data/demo-token)")
    parser.add_argument("--load-generator", nargs=3, metavar=("URL", "CONNECTIONS", "SECONDS"),
                        help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.url and not args.token:
        parser.error("--url needs --token")
    if args.url:
        args.baseline, args.profile_seconds = "refused", 0.0
    if args.load_generator:
        url, connections, seconds = args.load_generator
        load_generator(url, int(connections), float(seconds))
        return
    if args.quick:
        args.duration = min(args.duration, 10.0)
        args.latency_seconds = min(args.latency_seconds, 4.0)
    if not RECORDS.exists():
        raise SystemExit(f"the records file is missing: {RECORDS}")

    info = machine()
    print(f"Route latency benchmark, {info['date_utc']}")
    print(f"Machine: {info['nproc']} CPUs ({info['cpu']}), {info['memory_gb']} GB, {info['platform']}, "
          f"Python {info['python']}, load average {info['loadavg_at_start'][0]:.2f}")
    print("Versions: " + ", ".join(f"{k} {v}" for k, v in info["versions"].items()))
    if args.url:
        print(f"Server: the one running at {args.url}")
    else:
        print(f"Server: gunicorn, {args.workers} workers, {args.worker_class}"
              + (f" x {args.threads} threads" if args.worker_class == "gthread" else "")
              + f", DB_CONN_MAX_AGE={args.conn_max_age}, DEBUG off")
    # The baseline: its path, what its bodies carry beyond the query, and the status it answers.
    base_path, base_extra, base_status = (EMPTY, "", 200) if args.baseline == "empty" else (
        args.route_path, REFUSED_EXTRA, 400)

    work = Path(tempfile.mkdtemp(prefix="avengers-route-bench-"))
    data_dir = work / "data"
    env = {**os.environ, "AVENGERS_DATA_DIR": str(data_dir), "DJANGO_SETTINGS_MODULE": "bench.settings",
           "DEBUG": "false", "SECRET_KEY": "route-latency-bench-" + os.urandom(8).hex(),
           "ALLOWED_HOSTS": "127.0.0.1,localhost", "LOG_LEVEL": "WARNING", "PYTHONPATH": str(REPO),
           "DB_CONN_MAX_AGE": str(args.conn_max_age)}
    env.pop("DATABASE_URL", None)
    os.environ.update({k: env[k] for k in ("AVENGERS_DATA_DIR", "DJANGO_SETTINGS_MODULE", "DEBUG", "SECRET_KEY",
                                           "ALLOWED_HOSTS", "LOG_LEVEL")})
    os.environ.pop("DATABASE_URL", None)
    sys.path.insert(0, str(REPO))
    route_path = args.route_path
    server: subprocess.Popen[bytes] | None = None
    ok = False
    try:
        if args.url:
            prepared: dict[str, Any] = {"token": args.token, "snapshot_version": None, "timings": {}}
        else:
            print(f"Setting up in {work} ...", flush=True)
            prepared = prepare(data_dir, args.embedder)
        queries = test_queries()
        queries_file = work / "queries.txt"
        queries_file.write_text("".join(json.dumps(q, ensure_ascii=True) + "\n" for q in queries))
        wrk = None if args.no_wrk else ensure_wrk()
        print(f"Load tool: {'wrk (' + wrk + ')' if wrk else 'Python load generator (wrk not available)'}; "
              f"{len(queries)} test queries, each request's text distinct", flush=True)

        if args.url:
            base = args.url.rstrip("/")
            server_pid, db_pid, route_view = listener_pid(base), None, "the server's own"
        else:
            port = free_port()
            base = f"http://127.0.0.1:{port}"
            log = work / "gunicorn.log"
            server = start_gunicorn(env, port, args, log)
            wait_ready(base, server, log)
            server_pid, db_pid = server.pid, postgres_pid(data_dir)
            with urllib.request.urlopen(base + STATS, timeout=10) as response:
                route_view = json.loads(response.read())["route_view"]
        status, body = post(base + route_path, prepared["token"], {"query": queries[0]})
        if status != 200:
            raise SystemExit(f"POST {route_path} answered {status}: {body}")
        status_base, body_base = post(base + base_path, prepared["token"],
                                      json.loads('{"query": ' + json.dumps(queries[0]) + base_extra + "}"))
        if status_base != base_status or (args.baseline == "empty" and body_base != {}):
            raise SystemExit(f"POST {base_path} ({args.baseline} baseline) answered {status_base}: {body_base}")
        print(f"Serving on {base}; {route_path} is {route_view}; sample answer: {json.dumps(body)[:400]}", flush=True)

        runner = Runner(base, prepared["token"], queries_file, work, wrk, server_pid, db_pid)
        # Warm-up: every worker (and every thread) loads the snapshot and the embedder on its first request.
        warm = runner.run("warm-up", route_path, max(8, args.workers * args.threads), 4.0 if args.quick else 8.0)
        runner.run("warm-up baseline", base_path, 4, 2.0, extra=base_extra, expect=base_status)
        print(f"Warm-up: {warm.requests} route requests, {warm.errors} errors", flush=True)

        result: dict[str, Any] = {"machine": info, "args": {**vars(args), "token": "(hidden)"},
                                  "baseline": args.baseline, "setup": prepared["timings"],
                                  "snapshot_version": prepared["snapshot_version"], "route_view": route_view,
                                  "sample_route_response": body, "queries": len(queries),
                                  "load_tool": "wrk" if wrk else "python", "latency": []}
        for connections in [int(c) for c in args.latency_connections.split(",") if c.strip()]:
            merged = {"empty": Phase("empty", base_path, connections, 0),
                      "route": Phase("route", route_path, connections, 0)}
            for round_ in range(args.rounds):
                order = ("empty", "route") if round_ % 2 == 0 else ("route", "empty")
                for key in order:
                    phase = runner.run(f"latency {key} c={connections}", *(
                        (base_path, connections, args.latency_seconds, 1, base_extra, base_status) if key == "empty"
                        else (route_path, connections, args.latency_seconds)))
                    merged[key].merge(phase)
                    print(f"  latency c={connections} {key:<5} round {round_ + 1}: {phase.requests} requests, "
                          f"p50 {phase.percentile_ms(50):.2f} ms, p99 {phase.percentile_ms(99):.2f} ms, "
                          f"{phase.errors} errors", flush=True)
            empty, route = merged["empty"].as_dict(), merged["route"].as_dict()
            result["latency"].append({"connections": connections, "empty": empty, "route": route, "added": {
                "p50_ms": round(route["p50_ms"] - empty["p50_ms"], 3),
                "p99_ms": round(route["p99_ms"] - empty["p99_ms"], 3),
                "p50_ratio": round(route["p50_ms"] / empty["p50_ms"], 2),
                "p99_ratio": round(route["p99_ms"] / empty["p99_ms"], 2)}})

        throughput = {}
        for key, path in (("route", route_path), ("empty", base_path)):
            print(f"  throughput {key}: {args.duration:g} s at {args.throughput_connections} connections ...",
                  flush=True)
            phase = runner.run(f"throughput {key}", path, args.throughput_connections, args.duration,
                               *((1, base_extra, base_status) if key == "empty" else ()))
            throughput[key] = phase.as_dict()
        result["throughput"] = throughput
        if server is not None:
            with urllib.request.urlopen(base + STATS, timeout=10) as response:
                result["batchers_one_worker"] = json.loads(response.read())["batchers"]
        if args.profile_seconds > 0 and args.py_spy and server is not None:
            print(f"  profiling one worker with py-spy for {args.profile_seconds:g} s under route load ...",
                  flush=True)
            result["profile"] = profile_worker(runner, args.py_spy, server.pid, route_path,
                                               args.throughput_connections, args.profile_seconds, work)
        elif args.profile_seconds > 0:
            print("  no profile: py-spy not found (pip install py-spy, or --py-spy PATH)", flush=True)
        if args.hold > 0 and server is not None:
            print(f"Holding the server at {base} (gunicorn pid {server.pid}) for {args.hold:g} s; "
                  f"token {prepared['token']}", flush=True)
            time.sleep(args.hold)

        ok = report(result)
        RESULTS.mkdir(parents=True, exist_ok=True)
        out = RESULTS / f"route_latency-{dt.datetime.now(dt.timezone.utc).strftime('%Y%m%dT%H%M%SZ')}.json"
        out.write_text(json.dumps(result, indent=2, default=str))
        print(f"\nResults: {out.relative_to(REPO)}")
    finally:
        if server is not None:
            from devtools.local_platform import stop_group

            stop_group(server, timeout=30)
        try:
            from django.db import connections

            connections.close_all()
        except Exception:  # noqa: BLE001 - Django may not have been set up
            pass
        if not args.url:
            from devtools import embedded_db

            embedded_db.stop(data_dir / "pg")
        if args.keep:
            print(f"Kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
