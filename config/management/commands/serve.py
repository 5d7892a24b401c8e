"""Run the platform as in production until Ctrl-C or SIGTERM: gunicorn with DEBUG off and a Celery worker, on
the embedded database unless DATABASE_URL is set. `make run` runs it; `manage.py demo` adds demo data."""
from __future__ import annotations

import signal
import time
from typing import Any

from django.conf import settings
from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandError, CommandParser

from devtools import embedded_db, local_platform

WEB, WORKER = "web", "worker"


class Command(BaseCommand):
    help = "Serve the dashboard and the API with gunicorn (DEBUG off) and run a Celery worker until Ctrl-C."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--host", default="127.0.0.1",
                            help="Address to serve on (another than loopback needs ALLOWED_HOSTS).")
        parser.add_argument("--port", type=int, default=8000)
        parser.add_argument("--workers", type=int, default=local_platform.DEFAULT_WORKERS,
                            help="gunicorn worker processes (default %(default)s)")
        parser.add_argument("--threads", type=int, default=local_platform.DEFAULT_THREADS,
                            help="threads per worker (default %(default)s)")

    def handle(self, *args: Any, **options: Any) -> None:
        self.processes = local_platform.Processes()
        self.stopping = False
        self.env = local_platform.environment(settings.DATA_DIR)

        def interrupt(signum: int, frame: Any) -> None:
            raise KeyboardInterrupt

        # Until everything runs, Ctrl-C or SIGTERM stops what has been started (also when started with SIGINT
        # ignored); from then on they end the wait below.
        signal.signal(signal.SIGINT, interrupt)
        signal.signal(signal.SIGTERM, interrupt)
        try:
            call_command("migrate", interactive=False, verbosity=0)
            self.prepare(options)
            self.processes.spawn(WEB, local_platform.gunicorn_command(
                host=options["host"], port=options["port"], workers=options["workers"],
                threads=options["threads"]), self.env)
            self.processes.spawn(WORKER, local_platform.celery_command(), self.env)
        except KeyboardInterrupt:
            self.stdout.write("Interrupted.")
            self.stop()
            return
        except BaseException:
            self.stop()
            raise

        def on_signal(signum: int, frame: Any) -> None:
            self.stopping = True

        signal.signal(signal.SIGINT, on_signal)
        signal.signal(signal.SIGTERM, on_signal)
        failed = None
        try:
            self.banner(options)
            self.started(options)
            while not self.stopping:
                failed = self.processes.first_exited()
                if failed is not None:
                    self.stderr.write(f"The {failed[0]} process exited with code {failed[1]}; stopping.")
                    break
                time.sleep(0.3)
        finally:
            self.stop()
        if failed is not None and not self.stopping:
            raise CommandError(f"the {failed[0]} process failed; see its output above")

    # Hooks for `manage.py demo`.

    def prepare(self, options: dict[str, Any]) -> None:
        """Prepare what the processes need before they start."""

    def started(self, options: dict[str, Any]) -> None:
        """Start background work once the processes serve."""

    def stop_background(self) -> None:
        """Stop background work: called once the web server and the worker were asked to stop."""

    def banner(self, options: dict[str, Any]) -> None:
        url = self.url(options)
        self.stdout.write(self.style.SUCCESS("\nAvengers is running (gunicorn, DEBUG off)."))
        self.stdout.write(f"  Dashboard:  {url}\n  API:        {url}api/v1/  (schema: {url}api/schema/, "
                          f"docs: {url}api/docs/)")
        for line in self.banner_lines(options):
            self.stdout.write(line)
        self.stdout.flush()

    def banner_lines(self, options: dict[str, Any]) -> list[str]:
        return ["  Users:      python manage.py createsuperuser, then python manage.py create_api_token USER for an "
                "API token (docs/SECURITY.md: roles)", "Press Ctrl-C to stop.\n"]

    @staticmethod
    def url(options: dict[str, Any]) -> str:
        return f"http://{options['host']}:{options['port']}/"

    def stop(self) -> None:
        """Stop the web server and the worker, then background work and other children, the database last."""
        self.stdout.write("Stopping ...")
        self.stdout.flush()
        self.processes.terminate([WEB, WORKER])
        self.stop_background()
        self.processes.wait([WEB, WORKER])
        self.processes.stop_all()  # what the demo added: the local LLM's server, once nothing calls it
        if not settings.DATABASE_URL and embedded_db.started_here(settings.EMBEDDED_DB_DIR):
            from django.db import connections

            connections.close_all()
            embedded_db.stop(settings.EMBEDDED_DB_DIR)
            self.stdout.write(f"Stopped the embedded database in {settings.EMBEDDED_DB_DIR}.")
        self.stdout.write("Stopped.")
        self.stdout.flush()
