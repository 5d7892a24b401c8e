"""Dashboard pages for evaluation runs: the list, the form that starts one, the live run page and its samples."""
from __future__ import annotations

from django.contrib import messages
from django.core.paginator import Paginator
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render

from avengers_web import roles
from avengers_web.errors import found_or_404
from avengers_web.routes import Routes
from avengers_web.service_errors import ServiceError, add_service_error, object_button
from evaluation import selectors
from evaluation.forms import EvaluationRunForm
from evaluation.models import EvaluationRun
from evaluation.runs import services

pages = Routes()

PAGE_SIZE = 25
VERDICTS = ("correct", "wrong", "ungraded", "failed")


def _run_or_404(pk: int) -> EvaluationRun:
    return found_or_404(selectors.run_get(pk), "No such evaluation run")


@pages("evaluations/", name="evaluation-list")
def evaluation_list(request: HttpRequest) -> HttpResponse:
    status = request.GET.get("status", "")
    status = status if status in EvaluationRun.Status.values else ""
    page = Paginator(selectors.run_list(status=status), PAGE_SIZE).get_page(request.GET.get("page"))
    rows = [(run, selectors.run_progress(run)) for run in page]
    return render(request, "evaluation/run_list.html", {
        "page": page, "rows": rows, "status": status, "statuses": EvaluationRun.Status.values,
    })


@pages("evaluations/new/", name="evaluation-create", role=roles.START_RUN)
def evaluation_create(request: HttpRequest) -> HttpResponse:
    initial = {"dataset": request.GET.get("dataset"), "models": request.GET.getlist("model")}
    datasets, models = selectors.dataset_list(), selectors.run_model_choices()
    form = EvaluationRunForm(request.POST or None, initial=initial, datasets=datasets, models=models)
    if request.method == "POST" and form.is_valid():
        data = form.cleaned_data
        try:
            run = services.evaluation_run_create(
                dataset=data["dataset"], models=list(data["models"]), split=data["split"], samples=data["samples"],
                params=form.params(), use_cache=data["use_cache"], limit=data["limit"], user=request.user,
            )
        except ServiceError as exc:
            add_service_error(form, exc)
        else:
            messages.success(request, f"Started evaluation {run.pk}.")
            return redirect("evaluation-detail", pk=run.pk)
    return render(request, "evaluation/run_form.html", {
        "form": form, "has_datasets": datasets.exists(), "has_models": models.exists(),
    })


@pages("evaluations/<int:pk>/", name="evaluation-detail")
def evaluation_detail(request: HttpRequest, pk: int) -> HttpResponse:
    run = _run_or_404(pk)
    progress = selectors.run_progress(run)
    # A cancelled run's lanes finish the requests in flight before they stop; resuming before they have
    # would ask for those samples again, so the page waits for them (and keeps polling) instead.
    in_flight = progress.batches.get("running", 0) if run.status == EvaluationRun.Status.CANCELLED else 0
    return render(request, "evaluation/run_detail.html", {
        "run": run, "progress": progress, "in_flight": in_flight, "follow": run.is_active or in_flight > 0,
        "can_control": roles.may(request.user, roles.CONTROL_RUN, run),
        "can_resume": not in_flight and (
            run.status == EvaluationRun.Status.CANCELLED
            or (run.status == EvaluationRun.Status.DONE and (progress.failed > 0 or progress.remaining > 0))),
    })


@pages("evaluations/<int:pk>/cancel/", name="evaluation-cancel", role=roles.CONTROL_RUN, post_only=True)
def evaluation_cancel(request: HttpRequest, pk: int) -> HttpResponse:
    return object_button(request, _run_or_404(pk), roles.CONTROL_RUN,
                         lambda run: services.evaluation_run_cancel(run=run, user=request.user),
                         refused="Could not cancel", back="evaluation-detail",
                         done=lambda _: f"Cancelled evaluation {pk}; the requests in flight are still saved.")


@pages("evaluations/<int:pk>/resume/", name="evaluation-resume", role=roles.CONTROL_RUN, post_only=True)
def evaluation_resume(request: HttpRequest, pk: int) -> HttpResponse:
    def done(resumed: EvaluationRun) -> str:
        return f"Resumed evaluation {resumed.pk}: " + (
            resumed.message or "only the missing and failed samples are asked again.")

    return object_button(request, _run_or_404(pk), roles.CONTROL_RUN,
                         lambda run: services.evaluation_run_resume(run=run, user=request.user),
                         refused="Could not resume", back="evaluation-detail", done=done)


@pages("evaluations/<int:pk>/samples/", name="evaluation-samples")
def evaluation_samples(request: HttpRequest, pk: int) -> HttpResponse:
    run = _run_or_404(pk)
    model = request.GET.get("model", "")
    verdict = request.GET.get("verdict", "")
    verdict = verdict if verdict in VERDICTS else ""
    search = request.GET.get("q", "").strip()
    samples = selectors.run_samples(run, model=model, verdict=verdict, search=search)
    page = Paginator(samples, PAGE_SIZE).get_page(request.GET.get("page"))
    return render(request, "evaluation/run_samples.html", {
        "run": run, "page": page, "model": model, "verdict": verdict, "q": search, "verdicts": VERDICTS,
        "model_names": [rm.model.name for rm in run.run_models.all()],
    })
