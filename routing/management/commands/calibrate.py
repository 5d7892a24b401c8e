"""Build, derive and activate router snapshots from the command line.

    manage.py calibrate build --datasets A,B --models X,Y [--k 64] [--method kmeans] [--seed 42]
                              [--embedder NAME] [--shrinkage auto] [--team-size M | --team X,Y] [--activate]
    manage.py calibrate add-model SNAPSHOT MODEL [--activate]
    manage.py calibrate add-dataset SNAPSHOT DATASET [--activate]
    manage.py calibrate activate SNAPSHOT
    manage.py calibrate embed --datasets A,B [--embedder NAME]

SNAPSHOT is a version number. Work runs in this process unless --queue hands it to the workers.
"""
from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from avengers_web.service_errors import command_errors
from evaluation import selectors as evaluation_selectors
from evaluation.models import Dataset, LanguageModel
from routing import building, embedding_jobs, services
from routing.models import RouterSnapshot


def _split(value: str | None) -> list[str]:
    return [item.strip() for item in (value or "").split(",") if item.strip()]


class Command(BaseCommand):
    help = "Build, derive (add-model, add-dataset) and activate router snapshots; embed datasets."

    def add_arguments(self, parser: CommandParser) -> None:
        sub = parser.add_subparsers(dest="action", required=True)
        build = sub.add_parser("build", help="Build a snapshot from datasets and a pool of models.")
        build.add_argument("--datasets", required=True)
        build.add_argument("--models", required=True)
        build.add_argument("--k", type=int, default=64)
        build.add_argument("--method", default="kmeans")
        build.add_argument("--seed", type=int, default=42)
        build.add_argument("--embedder", default=None, help="default: AVENGERS_EMBEDDER")
        build.add_argument("--shrinkage", default="auto")
        build.add_argument("--team-size", type=int)
        build.add_argument("--team")
        build.add_argument("--label", default="")
        build.add_argument("--router", default="auto",
                           help="auto (chosen by 5-fold CV on train) or a registered router's name")
        build.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                           help="a parameter of --router, e.g. --set shrinkage=16 (repeatable)")
        derived = []
        for name in ("add-model", "add-dataset"):
            derive = sub.add_parser(name, help=f"Derive a snapshot: {name.replace('-', ' ')}.")
            derive.add_argument("snapshot", type=int, help="Version of the snapshot to derive from.")
            derive.add_argument("target", help="Model name" if name == "add-model" else "Dataset name")
            derived.append(derive)
        activate = sub.add_parser("activate", help="Make a snapshot the one routing uses.")
        activate.add_argument("snapshot", type=int)
        embed = sub.add_parser("embed", help="Embed the queries of datasets that have no vector yet.")
        embed.add_argument("--datasets", required=True)
        embed.add_argument("--embedder", default=None, help="default: AVENGERS_EMBEDDER")
        for action in (build, *derived, embed):
            action.add_argument("--queue", action="store_true", help="Hand the work to the Celery workers.")
        for action in (build, *derived):
            action.add_argument("--activate", action="store_true", help="Activate the snapshot once built.")

    @command_errors
    def handle(self, *args: Any, **options: Any) -> None:
        getattr(self, "_" + options["action"].replace("-", "_"))(options)

    def _build(self, options: dict[str, Any]) -> None:
        snapshot = services.snapshot_create(
            datasets=self._datasets(options["datasets"]), models=self._models(options["models"]),
            embedder=options["embedder"], method=options["method"], k=options["k"], seed=options["seed"],
            shrinkage=options["shrinkage"], team_size=options["team_size"],
            team=_split(options["team"]) or None, label=options["label"], queue=options["queue"],
            router=options["router"], router_params=_params(options["set"]),
        )
        self._finish(snapshot, options)

    def _add_model(self, options: dict[str, Any]) -> None:
        model = self._models(options["target"])[0]
        self._finish(services.snapshot_add_model(snapshot=self._snapshot(options["snapshot"]), model=model,
                                                 queue=options["queue"]), options)

    def _add_dataset(self, options: dict[str, Any]) -> None:
        dataset = self._datasets(options["target"])[0]
        self._finish(services.snapshot_add_dataset(snapshot=self._snapshot(options["snapshot"]), dataset=dataset,
                                                   queue=options["queue"]), options)

    def _activate(self, options: dict[str, Any]) -> None:
        snapshot = services.snapshot_activate(snapshot=self._snapshot(options["snapshot"]))
        self.stdout.write(f"v{snapshot.version} is now the active snapshot")

    def _embed(self, options: dict[str, Any]) -> None:
        job = embedding_jobs.embedding_job_create(datasets=self._datasets(options["datasets"]),
                                                  embedder=options["embedder"], queue=options["queue"])
        if options["queue"]:
            self.stdout.write(f"embedding job {job.pk} queued")
            return
        embedding_jobs.embedding_job_run(job_id=job.pk)
        job.refresh_from_db()
        self.stdout.write(f"embedding job {job.pk}: {job.status}. {job.message}")

    def _finish(self, snapshot: RouterSnapshot, options: dict[str, Any]) -> None:
        if options["queue"]:
            self.stdout.write(f"v{snapshot.version} queued; follow it on /snapshots/{snapshot.pk}/")
            return
        outcome = building.snapshot_build(snapshot_id=snapshot.pk)
        snapshot.refresh_from_db()
        if outcome == "waiting":
            self.stdout.write(f"v{snapshot.version} waits for {snapshot.evaluation_runs.count()} evaluation run(s); "
                              f"run the workers, or `evaluate --resume RUN --inline`, then build it with --queue")
            return
        if snapshot.status != RouterSnapshot.Status.DONE:
            raise CommandError(f"v{snapshot.version} failed: {snapshot.message}")
        avengers = (snapshot.heldout.get("methods", {}).get("avengers") or {}).get("in_distribution")
        best = (snapshot.heldout.get("methods", {}).get("best_single") or {}).get("in_distribution")
        self.stdout.write(f"v{snapshot.version}: {snapshot.message}; team {', '.join(snapshot.team)}")
        if avengers is not None:
            self.stdout.write(f"held-out (in-distribution): avengers {avengers:.1f}, best single {best:.1f}")
        if options.get("activate"):
            services.snapshot_activate(snapshot=snapshot)
            self.stdout.write(f"v{snapshot.version} is now the active snapshot")

    def _snapshot(self, version: int) -> RouterSnapshot:
        snapshot = RouterSnapshot.objects.filter(version=version).first()
        if snapshot is None:
            raise CommandError(f"there is no snapshot v{version}")
        return snapshot

    def _datasets(self, value: str) -> list[Dataset]:
        found, unknown = evaluation_selectors.datasets_by_name_or_id(_split(value))
        if unknown:
            raise CommandError(f"there is no dataset {unknown[0]!r}")
        return found

    def _models(self, value: str) -> list[LanguageModel]:
        found, unknown = evaluation_selectors.models_by_name_or_id(_split(value))
        if unknown:
            raise CommandError(f"there is no model {', '.join(map(repr, unknown))}")
        return found



def _params(items: list[str]) -> dict[str, Any]:
    from routing.offline import parse_params

    try:
        return parse_params(items)
    except ValueError as exc:
        raise CommandError(str(exc)) from None
