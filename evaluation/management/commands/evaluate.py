"""Start, follow, cancel or resume an evaluation run from the command line."""
from __future__ import annotations

import time
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from avengers_web.service_errors import command_errors
from evaluation import selectors
from evaluation.runs import lanes, services
from evaluation.models import EvaluationRun


class Command(BaseCommand):
    help = ("Evaluate models on a dataset: `evaluate --models A,B --dataset D --split train --samples 10`. "
            "Workers do the work unless --inline; --resume RUN and --cancel RUN act on an existing run.")

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--models", help="Comma-separated model names (or ids).")
        parser.add_argument("--dataset", help="Dataset name (or id).")
        parser.add_argument("--split", default="train", choices=EvaluationRun.Split.values)
        parser.add_argument("--samples", type=int, default=1)
        parser.add_argument("--temperature", type=float)
        parser.add_argument("--top-p", type=float)
        parser.add_argument("--max-tokens", type=int)
        parser.add_argument("--seed", type=int, help="Each sample gets seed + its index; seeded requests are cached.")
        parser.add_argument("--stop", action="append", help="A stop sequence (repeat for several).")
        parser.add_argument("--limit", type=int, help="Only the first N queries of the split.")
        parser.add_argument("--batch-size", type=int, default=services.DEFAULT_BATCH_SIZE)
        parser.add_argument("--no-cache", action="store_true", help="Always ask the server, even for seeded requests.")
        parser.add_argument("--resume", type=int, metavar="RUN", help="Queue again what run RUN misses or failed.")
        parser.add_argument("--cancel", type=int, metavar="RUN", help="Cancel run RUN.")
        parser.add_argument("--inline", action="store_true",
                            help="Do the work in this process instead of the Celery workers.")
        parser.add_argument("--no-wait", action="store_true", help="Return once the run is queued.")

    @command_errors
    def handle(self, *args: Any, **options: Any) -> None:
        run = self._act(options)
        self.stdout.write(f"run {run.pk}: {run.status}")
        if options["cancel"] is not None:
            return
        if options["inline"]:
            for run_model in run.run_models.all():
                lanes.evaluation_lane_run(run_id=run.pk, model_id=run_model.model_id,
                                          client_factory=lanes.client_for_model)
        elif options["no_wait"]:
            return
        self._follow(run.pk)

    def _act(self, options: dict[str, Any]) -> EvaluationRun:
        for flag in ("resume", "cancel"):
            if options[flag] is not None:
                run = selectors.run_get(options[flag])
                if run is None:
                    raise CommandError(f"there is no run {options[flag]}")
                if flag == "resume":
                    return services.evaluation_run_resume(run=run, queue=not options["inline"])
                return services.evaluation_run_cancel(run=run)
        if not options["models"] or not options["dataset"]:
            raise CommandError("give --models and --dataset (or --resume RUN / --cancel RUN)")
        datasets, unknown = selectors.datasets_by_name_or_id([options["dataset"]])
        if unknown:
            raise CommandError(f"there is no dataset {options['dataset']!r}")
        models, unknown = selectors.models_by_name_or_id([m for m in options["models"].split(",") if m.strip()])
        if unknown:
            raise CommandError(f"there is no model {', '.join(map(repr, unknown))}")
        params = {key: options[key] for key in ("temperature", "top_p", "max_tokens", "seed", "stop")
                  if options[key] is not None}
        return services.evaluation_run_create(
            dataset=datasets[0], models=models, split=options["split"], samples=options["samples"], params=params,
            use_cache=not options["no_cache"], limit=options["limit"], batch_size=options["batch_size"],
            queue=not options["inline"],
        )

    def _follow(self, run_id: int) -> None:
        """Print progress until the run stops; Ctrl-C stops following, not the run."""
        try:
            while True:
                run = selectors.run_get(run_id)
                assert run is not None
                progress = selectors.run_progress(run)
                rate = f"{progress.rate_per_s:.2f}/s" if progress.rate_per_s else "-"
                eta = f"{progress.eta_s:.0f} s" if progress.eta_s is not None else "-"
                self.stdout.write(f"{progress.done}/{progress.total} done, {progress.failed} failed, "
                                  f"{progress.remaining} remaining, {rate}, ETA {eta}")
                if not run.is_active:
                    break
                time.sleep(2)
        except KeyboardInterrupt:
            self.stdout.write(f"stopped following; the run goes on (evaluate --cancel {run_id} stops it)")
            return
        for model in progress.models:
            accuracy = f"{100 * model.mean_score:.1f}%" if model.mean_score is not None else "-"
            self.stdout.write(f"  {model.model_name}: {model.done} done, {model.failed} failed, "
                              f"{model.cached} from cache, accuracy {accuracy}")
        self.stdout.write(f"run {run.pk}: {run.status}. {run.message}")
