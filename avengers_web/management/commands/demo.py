"""Run the platform with demo data: database, migrations, real records, a worker and the web server."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandError, CommandParser

from avengers_web import embedded_db
from avengers_web.services import api_token_authenticate, api_token_create
from evaluation.core.datasets import DatasetFileError
from evaluation.models import Dataset, LanguageModel, Query
from evaluation.services import dataset_import_file

SHARED_RECORDS = settings.BASE_DIR.parent / "shared" / "data" / "llmrouter" / "records.jsonl"
BUNDLED_RECORDS = settings.BASE_DIR / "demo" / "sample_records.jsonl"


class Command(BaseCommand):
    help = "Start the platform with demo data and serve it until Ctrl-C, then stop what it started."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--host", default="127.0.0.1")
        parser.add_argument("--port", type=int, default=8000)
        parser.add_argument("--records", type=Path, default=None,
                            help="Records file to import (default: shared/data/llmrouter/records.jsonl, "
                                 "else the bundled sample).")
        parser.add_argument("--username", default="demo")
        parser.add_argument("--password", default="avengers-demo")

    def handle(self, *args: Any, **options: Any) -> None:
        call_command("migrate", interactive=False, verbosity=0)
        self._import(options["records"])
        user = self._user(options["username"], options["password"])
        self._snapshot(user)
        token = self._token(user)
        children = [
            self._spawn([sys.executable, "-m", "celery", "-A", "avengers_web", "worker", "--loglevel", "INFO",
                         "--concurrency", "2", "--hostname", "demo@%h", "--beat"]),
            self._spawn([sys.executable, str(settings.BASE_DIR / "manage.py"), "runserver", "--noreload",
                         f"{options['host']}:{options['port']}"]),
        ]
        url = f"http://{options['host']}:{options['port']}/"
        self.stdout.write(self.style.SUCCESS("\nAvengers is starting."))
        self.stdout.write(f"  Dashboard:  {url}\n  API:        {url}api/v1/  (schema: {url}api/schema/, "
                          f"docs: {url}api/docs/)\n  Log in:     {options['username']} / {options['password']}\n"
                          f"  API token:  {token}\n  Try:        curl -H 'Authorization: Bearer {token}' "
                          f"{url}api/v1/datasets\nPress Ctrl-C to stop.\n")
        self.stdout.flush()
        stopping = False

        def on_signal(signum: int, frame: Any) -> None:
            nonlocal stopping
            stopping = True

        signal.signal(signal.SIGINT, on_signal)
        signal.signal(signal.SIGTERM, on_signal)
        try:
            while not stopping:
                dead = [c for c in children if c.poll() is not None]
                if dead:
                    self.stderr.write(f"{dead[0].args[2:4]} exited with code {dead[0].returncode}; stopping.")
                    break
                time.sleep(0.3)
        finally:
            self._stop(children)
        if any(c.returncode not in (0, -signal.SIGTERM, -signal.SIGINT, -signal.SIGKILL) for c in children) and not stopping:
            raise CommandError("a demo process failed; see its output above")

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
        snapshot = routing_services.snapshot_create(
            datasets=list(Dataset.objects.all()), models=list(LanguageModel.objects.all()), k=k,
            label="demo", user=user, queue=False)
        routing_services.snapshot_build(snapshot_id=snapshot.pk)
        snapshot.refresh_from_db()
        if snapshot.status != RouterSnapshot.Status.DONE:
            raise CommandError(f"building the demo snapshot failed: {snapshot.message}")
        routing_services.snapshot_activate(snapshot=snapshot, user=user)
        avengers = snapshot.heldout.get("methods", {}).get("avengers", {}).get("in_distribution")
        self.stdout.write(f"  v{snapshot.version} active: {snapshot.message}"
                          + (f"; held-out accuracy {avengers:.1f}" if avengers is not None else ""))

    def _user(self, username: str, password: str) -> Any:
        User = get_user_model()
        user = User.objects.filter(username=username).first()
        if user is None:
            user = User.objects.create_superuser(username=username, password=password, email="")
        elif not user.check_password(password):
            user.set_password(password)
            user.save(update_fields=["password"])
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

    def _spawn(self, command: list[str]) -> subprocess.Popen[bytes]:
        # A new session keeps the terminal's Ctrl-C away from the children, so that we stop them in order.
        return subprocess.Popen(command, cwd=settings.BASE_DIR, start_new_session=True)

    def _stop(self, children: list[subprocess.Popen[bytes]]) -> None:
        self.stdout.write("Stopping ...")
        for child in children:
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 15
        for child in children:
            try:
                child.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()
        if not settings.DATABASE_URL and embedded_db.started_here(settings.EMBEDDED_DB_DIR):
            from django.db import connections

            connections.close_all()
            embedded_db.stop(settings.EMBEDDED_DB_DIR)
            self.stdout.write(f"Stopped the embedded database in {settings.EMBEDDED_DB_DIR}.")
        self.stdout.write("Stopped.")
