"""Import a dataset file (JSON Lines, CSV or the records format) from the command line."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from evaluation.core.datasets import DatasetFileError
from evaluation.services import dataset_import_file


class Command(BaseCommand):
    help = "Import queries (and any per-model scores and responses) from a JSON Lines or CSV file."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("file", type=Path)
        parser.add_argument("--name", default="", help="Dataset for lines without a dataset column.")
        parser.add_argument("--split-seed", type=int, default=None,
                            help="Seed of the 70/30 split when a new dataset is created (default: AVENGERS_SPLIT_SEED).")

    def handle(self, *args: Any, **options: Any) -> None:
        path: Path = options["file"]
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise CommandError(f"cannot read {path}: {exc.strerror}") from None
        try:
            summary = dataset_import_file(data=data, filename=path.name, default_name=options["name"],
                                          split_seed=options["split_seed"])
        except DatasetFileError as exc:
            lines = [f"{path}: nothing was imported."] + [f"  {p}" for p in exc.problems]
            raise CommandError("\n".join(lines)) from None
        for ds in summary.datasets:
            state = "created" if ds.created else ("extended" if ds.queries_added else "unchanged")
            self.stdout.write(f"{ds.name}: {state}, {ds.queries_added} new queries "
                              f"({ds.train_added} train, {ds.test_added} test), {ds.queries_existing} already there")
        if summary.models_created:
            self.stdout.write(f"offline models created: {', '.join(summary.models_created)}")
        self.stdout.write(self.style.SUCCESS(
            f"Imported {summary.queries_added} new queries into {len(summary.datasets)} dataset(s); "
            f"{summary.responses_added} new model results ({summary.responses_existing} already there)."
        ))
