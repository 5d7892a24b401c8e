"""Run the platform with demo data: what `serve` runs (gunicorn, DEBUG off, a worker) plus real records, a snapshot,
a local LLM, and its first evaluation in the background while the dashboard already serves."""
from __future__ import annotations

import contextlib
import json
import os
import threading
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management.base import CommandError, CommandParser

from devtools import local_llm, local_platform
from avengers_web.roles import set_role
from avengers_web.service_errors import ServiceError
from config.management.commands import serve
from avengers_web.services import api_token_authenticate, api_token_create
from evaluation import selectors
from evaluation.core.datasets import DatasetFileError
from evaluation.models import Dataset, EvaluationRun, LanguageModel, ModelResponse, Query
from evaluation.services import dataset_import_file, model_create, model_update

SHARED_RECORDS = settings.BASE_DIR.parent / "shared" / "data" / "llmrouter" / "records.jsonl"
BUNDLED_RECORDS = settings.BASE_DIR / "demo" / "sample_records.jsonl"

# The local LLM: SmolLM2-135M-Instruct behind llama.cpp's OpenAI-compatible server, registered under LLM_NAME.
LLM_NAME = "smollm2-135m"
LLM_ALIAS = "smollm2"
# Task types with short answers that the graders read reliably (code needs long answers and the sandbox,
# free-form text long answers).
LLM_TASK_TYPES = ("mcq", "math", "qa")
# Its sample: a short answer limit keeps it to about two minutes on two idle cores (it reads about 140 prompt
# tokens/s and writes about 75 tokens/s; maths answers run to the limit). Greedy, so that re-runs agree.
LLM_PARAMS = {"max_tokens": 192, "temperature": 0.0}
# What routing asks it for by default: answers a little longer than the sample's.
LLM_DEFAULT_PARAMS = {"max_tokens": 256}
LLM = "llm"  # its server among the demo's processes
ACTIVE = [EvaluationRun.Status.PENDING, EvaluationRun.Status.RUNNING]


class Command(serve.Command):
    help = ("Serve the platform as `serve` does (gunicorn, DEBUG off, a worker) with demo data and a local LLM, "
            "until Ctrl-C; then stop what it started.")

    def add_arguments(self, parser: CommandParser) -> None:
        super().add_arguments(parser)
        parser.add_argument("--records", type=Path, default=None,
                            help="Records file to import (default: shared/data/llmrouter/records.jsonl, "
                                 "else the bundled sample).")
        parser.add_argument("--username", default="demo")
        parser.add_argument("--password", default="avengers-demo")
        parser.add_argument("--no-llm", action="store_true",
                            help=f"Do not start the local LLM ({LLM_NAME}); routing then has no model to call.")
        parser.add_argument("--llm-port", type=int, default=0,
                            help="Port of the local LLM server on 127.0.0.1 (default: a free one).")
        parser.add_argument("--llm-queries", type=int, default=5, metavar="N",
                            help=f"Evaluate the local LLM on the first N train queries of each dataset of task "
                                 f"type {', '.join(LLM_TASK_TYPES)} (default 5; answers are kept across runs).")

    def prepare(self, options: dict[str, Any]) -> None:
        """Create the demo user and token, and start the local LLM's server (about a second)."""
        self.user = self._user(options["username"], options["password"])
        self.token = self._token(self.user)
        self.llm_url: str | None = None
        self.llm_model: LanguageModel | None = None
        if options["no_llm"]:
            self.stdout.write("Not starting the local LLM (--no-llm).")
        else:
            self.llm_url = self._local_llm(options)
        self.setup_stop = threading.Event()
        self.setup_runs: list[int] = []
        self.setup_thread: threading.Thread | None = None

    def started(self, options: dict[str, Any]) -> None:
        # The data, the snapshot and the local LLM's first evaluation take minutes on a fresh machine: the
        # dashboard serves meanwhile and shows them arrive (the evaluation's progress is on the overview).
        self.setup_thread = threading.Thread(target=self._setup, args=(options,), name="demo-setup", daemon=True)
        self.setup_thread.start()

    def stop_background(self) -> None:
        """Cancel the local LLM's evaluation (its answers are kept) and wait for the setup thread."""
        thread = getattr(self, "setup_thread", None)
        if thread is None:
            return
        self.setup_stop.set()
        from evaluation.runs import services

        for run in EvaluationRun.objects.filter(pk__in=self.setup_runs, status__in=ACTIVE):
            with contextlib.suppress(ServiceError):
                services.evaluation_run_cancel(run=run, user=self.user)
        # A lane finishes its request in flight (seconds); an import or a snapshot build is cut off when the
        # process exits (the import is one transaction; the next start builds the snapshot again).
        thread.join(timeout=local_platform.STOP_TIMEOUT_S - 5)

    def banner_lines(self, options: dict[str, Any]) -> list[str]:
        lines = [f"  Log in:     {options['username']} / {options['password']}", f"  API token:  {self.token}",
                 f"  Try:        curl -H 'Authorization: Bearer {self.token}' {self.url(options)}api/v1/datasets"]
        if self.llm_url is not None:
            lines.append(f"  Local LLM:  {LLM_NAME} at {self.llm_url} (routing answers with it once it is evaluated; "
                         "progress on the overview)")
        return [*lines, "Setting up the demo data in the background; press Ctrl-C to stop.\n"]

    def _setup(self, options: dict[str, Any]) -> None:
        """Import the records, build the snapshot, evaluate the local LLM and route with it; then say what to try."""
        from django.db import connections

        try:
            self._import(options["records"])
            if self.setup_stop.is_set():
                return
            self._snapshot(self.user)
            if self.llm_model is not None and not self.setup_stop.is_set():
                self._llm_evaluate(self.llm_model, self.user, options["llm_queries"])
                if not self.setup_stop.is_set():
                    self._llm_snapshot(self.llm_model, self.user)
            if not self.setup_stop.is_set():
                self._ready(options)
        except Exception as exc:  # noqa: BLE001 - the platform keeps serving; say what went wrong
            if not self.setup_stop.is_set():
                self.stderr.write(f"Setting up the demo failed: {exc}")
        finally:
            connections.close_all()  # this thread's connections

    def _ready(self, options: dict[str, Any]) -> None:
        url = self.url(options)
        self.stdout.write(self.style.SUCCESS("The demo is set up."))
        if self.llm_model is not None:
            auth = f"-H 'Authorization: Bearer {self.token}'"
            body = '{"query": "What is 7*6?", "strategy": "self_consistency", "samples": 3}'
            client = (f"OpenAI(base_url='{url}v1', api_key='{self.token}').chat.completions.create(model='avengers', "
                      "messages=[{'role': 'user', 'content': 'What is 7*6?'}], extra_body={'strategy': 'direct'})"
                      ".choices[0].message.content")
            self.stdout.write(
                f"  Routing answers with {LLM_NAME}. Each example takes seconds:\n"
                f"  Ask:        curl {auth} -H 'Content-Type: application/json' -d '{body}' {url}api/v1/answer\n"
                f"  OpenAI:     pip install openai; python -c \"from openai import OpenAI; print({client})\"")
        self.stdout.flush()

    def _import(self, records: Path | None) -> None:
        path = records or (SHARED_RECORDS if SHARED_RECORDS.exists() else BUNDLED_RECORDS)
        self.stdout.write(f"Importing {path} ...")
        try:
            summary = dataset_import_file(data=path.read_bytes(), filename=path.name)
        except (OSError, DatasetFileError) as exc:
            raise CommandError(f"cannot import the demo records {path}: {exc}") from None
        self.stdout.write(f"  {summary.queries_added} new queries ({summary.queries_existing} already there), "
                          f"{summary.responses_added} new model results, {len(summary.datasets)} datasets")
        prices = path.parent / "models.json"
        if not prices.exists():
            prices = settings.BASE_DIR / "demo" / "models.json"
        for name, info in json.loads(prices.read_text()).items():
            LanguageModel.objects.filter(name=name, cost_input_per_mtok__isnull=True).update(
                cost_input_per_mtok=Decimal(str(info.get("input_price", 0))),
                cost_output_per_mtok=Decimal(str(info.get("output_price", 0))),
                description=info.get("feature", ""),
            )

    def _snapshot(self, user: Any) -> None:
        """Build and activate a K=64 router snapshot of the demo data, unless one is active already."""
        from routing import building
        from routing import services as routing_services
        from routing.models import RouterSnapshot

        active = RouterSnapshot.objects.filter(is_active=True).first()
        if active is not None:
            self.stdout.write(f"Router snapshot v{active.version} is active.")
            return
        train = Query.objects.filter(split="train").count()
        k = min(64, max(2, train // 10))
        self.stdout.write(f"Building router snapshot (K={k}, all datasets and models; embeddings are cached "
                          f"after the first run) ...")
        # The local LLM joins once it has scores (_llm_snapshot).
        snapshot = routing_services.snapshot_create(
            datasets=list(Dataset.objects.all()), models=list(LanguageModel.objects.exclude(name=LLM_NAME)), k=k,
            label="demo", user=user, queue=False)
        building.snapshot_build(snapshot_id=snapshot.pk)
        snapshot.refresh_from_db()
        if snapshot.status != RouterSnapshot.Status.DONE:
            raise CommandError(f"building the demo snapshot failed: {snapshot.message}")
        routing_services.snapshot_activate(snapshot=snapshot, user=user)
        avengers = snapshot.heldout.get("methods", {}).get("avengers", {}).get("in_distribution")
        self.stdout.write(f"  v{snapshot.version} active: {snapshot.message}"
                          + (f"; held-out accuracy {avengers:.1f}" if avengers is not None else ""))

    def _local_llm(self, options: dict[str, Any]) -> str | None:
        """Serve the local LLM and register it; return its URL (its evaluation runs in the background)."""
        try:
            local_llm.check_installed()
        except local_llm.LocalLLMUnavailable as exc:
            self.stdout.write(self.style.WARNING(f"Not starting the local LLM: {exc}"))
            return None
        port = options["llm_port"] or local_llm.free_port()
        log_path = settings.DATA_DIR / "llm-server.log"
        self.stdout.write(f"Starting the local LLM (SmolLM2-135M-Instruct, llama.cpp) on 127.0.0.1:{port} "
                          f"(log: {log_path}) ...")
        try:
            self.processes.adopt(LLM, local_llm.start(port=port, log_path=log_path, alias=LLM_ALIAS, new_session=True))
        except local_llm.LocalLLMUnavailable as exc:
            self.stdout.write(self.style.WARNING(f"The local LLM did not start, going on without it: {exc}"))
            return None
        base_url = f"http://127.0.0.1:{port}/v1"
        self.llm_model = self._llm_model(base_url, self.user)
        return base_url

    def _llm_model(self, base_url: str, user: Any) -> LanguageModel:
        """Register the local LLM, or point the registered one at this run's server."""
        model = LanguageModel.objects.filter(name=LLM_NAME).first()
        if model is None:
            model = model_create(
                user=user, name=LLM_NAME, base_url=base_url, served_model_id=LLM_ALIAS, max_concurrency=1,
                default_params=LLM_DEFAULT_PARAMS,
                cost_input_per_mtok=Decimal("0"), cost_output_per_mtok=Decimal("0"),
                description="SmolLM2-135M-Instruct (GGUF, Q4_1) served by llama.cpp on this machine by `make demo`.",
            )
            self.stdout.write(f"  registered model {LLM_NAME} at {base_url}")
            return model
        wanted = {"base_url": base_url, "served_model_id": LLM_ALIAS, "is_active": True}
        changed = {key: value for key, value in wanted.items() if getattr(model, key) != value}
        if changed:
            model = model_update(model=model, user=user, **changed)
        self.stdout.write(f"  model {LLM_NAME} is registered" + (f"; now at {base_url}" if changed else ""))
        return model

    def _llm_evaluate(self, model: LanguageModel, user: Any, per_dataset: int) -> None:
        """Evaluate the model on the first train queries of each dataset, in this thread; skip what is answered."""
        from evaluation.runs import lanes, services

        if per_dataset < 1:
            return
        work = []
        for dataset in Dataset.objects.order_by("name"):
            queries = list(Query.objects.filter(dataset=dataset, split="train").order_by("id")[:per_dataset])
            if not queries or any(q.task_type not in LLM_TASK_TYPES for q in queries):
                continue
            answered = ModelResponse.objects.filter(model=model, query__in=queries, error="", score__isnull=False)
            if answered.values("query").distinct().count() < len(queries):
                work.append(dataset)
        if not work:
            self.stdout.write(f"  {LLM_NAME} already has its sample answered and graded.")
            return
        self.stdout.write(f"Evaluating {LLM_NAME} on the first {per_dataset} train queries of {len(work)} datasets, "
                          f"at most {LLM_PARAMS['max_tokens']} tokens an answer, in the background (once: the "
                          "answers are kept; progress on the overview) ...")
        self.stdout.flush()
        # All runs first, so that the overview shows the whole evaluation; a stop cancels those still active.
        runs = []
        for dataset in work:
            runs.append(services.evaluation_run_create(dataset=dataset, models=[model], split="train",
                                                       params=LLM_PARAMS, limit=per_dataset, user=user, queue=False))
            self.setup_runs.append(runs[-1].pk)
        for run in runs:
            if self.setup_stop.is_set():
                return
            started = time.monotonic()
            lanes.evaluation_lane_run(run_id=run.pk, model_id=model.pk, client_factory=lanes.client_for_model)
            run.refresh_from_db()
            (progress,) = selectors.run_progress(run).models
            accuracy = f"{100 * progress.mean_score:.0f}%" if progress.mean_score is not None else "-"
            self.stdout.write(f"  {run.dataset.name}: {progress.done} answered, {progress.failed} failed, accuracy "
                              f"{accuracy} ({time.monotonic() - started:.0f} s)")
            self.stdout.flush()

    def _llm_snapshot(self, model: LanguageModel, user: Any) -> None:
        """Derive a snapshot from the active one with the model added, from the scores it has, and activate it."""
        from routing import building
        from routing import services as routing_services
        from routing.models import RouterSnapshot

        active = RouterSnapshot.objects.filter(is_active=True).first()
        if active is None:
            return
        if active.pool.filter(pk=model.pk).exists():
            self.stdout.write(f"  router snapshot v{active.version} routes with {LLM_NAME}.")
            return
        # A team chosen by size or by hand could leave the newcomer out: then keep the parent's and add it.
        team = [*active.team, model.name] if active.team_size is not None or active.team_chosen_by_hand else None
        self.stdout.write(f"Adding {LLM_NAME} to router snapshot v{active.version} (same clusters) ...")
        try:
            derived = routing_services.snapshot_add_model(snapshot=active, model=model, user=user, queue=False,
                                                          evaluate_missing=False, team=team)
        except ServiceError as exc:
            self.stdout.write(self.style.WARNING(f"  not added: {exc.message}"))
            return
        building.snapshot_build(snapshot_id=derived.pk)
        derived.refresh_from_db()
        if derived.status != RouterSnapshot.Status.DONE:
            raise CommandError(f"building the snapshot with {LLM_NAME} failed: {derived.message}")
        routing_services.snapshot_activate(snapshot=derived, user=user)
        included = "with" if model.name in derived.team else "WITHOUT"
        self.stdout.write(f"  v{derived.version} active: {derived.message}; a team of {len(derived.team)} models "
                          f"{included} {LLM_NAME}")

    def _user(self, username: str, password: str) -> Any:
        User = get_user_model()
        user = User.objects.filter(username=username).first()
        if user is None:
            user = User.objects.create_superuser(username=username, password=password, email="")
        elif not user.check_password(password):
            user.set_password(password)
            user.save(update_fields=["password"])
        set_role(user, "admin")  # the demo user is an admin (avengers_web/roles.py)
        return user

    def _token(self, user: Any) -> str:
        wanted = os.environ.get("AVENGERS_API_TOKEN", "").strip()
        if wanted:
            api_token_create(user=user, name="demo (AVENGERS_API_TOKEN)", key=wanted)
            return wanted
        # Keep one demo token across runs: only its hash is in the database, so remember the key on disk.
        saved = settings.DATA_DIR / "demo-token"
        if saved.exists():
            key = saved.read_text().strip()
            if api_token_authenticate(key) is not None:
                return key
        _, key = api_token_create(user=user, name="demo")
        saved.write_text(key)
        saved.chmod(0o600)
        return key
