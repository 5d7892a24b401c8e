"""Dashboard pages for datasets, imports and models (server-rendered)."""
from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from django.contrib import messages
from django.core.exceptions import ValidationError
from django.core.paginator import Paginator
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import redirect, render
from django.urls import reverse

from avengers_web import roles
from avengers_web.errors import found_or_404
from avengers_web.routes import Routes
from avengers_web.service_errors import ServiceError, add_service_error
from evaluation import selectors, services
from evaluation.core.datasets import TASK_TYPES, DatasetFileError
from evaluation.core.prompts import DEFAULT_TEMPLATES
from evaluation.forms import DatasetTemplatesForm, DatasetUploadForm, ModelForm
from evaluation.models import LanguageModel

pages = Routes()

# Apps that build on evaluation add to the model page here (routing adds the model's routing profile),
# because evaluation never imports them.
ModelPageExtra = Callable[[HttpRequest, LanguageModel], dict[str, Any]]
MODEL_PAGE_EXTRAS: list[ModelPageExtra] = []


@pages("datasets/", name="dataset-list")
def dataset_list(request: HttpRequest) -> HttpResponse:
    return render(request, "evaluation/dataset_list.html", {
        "datasets": selectors.dataset_list(), "imports": selectors.import_recent(5),
    })


@pages("datasets/<int:pk>/", name="dataset-detail")
def dataset_detail(request: HttpRequest, pk: int) -> HttpResponse:
    dataset = found_or_404(selectors.dataset_get(pk), "No such dataset")
    split = request.GET.get("split", "")
    split = split if split in ("train", "test") else ""
    task_type = request.GET.get("task_type", "")
    search = request.GET.get("q", "").strip()
    queries = selectors.dataset_queries(dataset, split=split, task_type=task_type, search=search)
    page = Paginator(queries, 25).get_page(request.GET.get("page"))
    scores = selectors.query_scores([q.pk for q in page])
    stats = selectors.dataset_stats(dataset)
    model_names = [m["name"] for m in stats["models"]]
    rows = [(q, [scores.get(q.pk, {}).get(name) for name in model_names]) for q in page]
    return render(request, "evaluation/dataset_detail.html", {
        "dataset": dataset, "stats": stats, "page": page, "rows": rows, "model_names": model_names,
        "split": split, "task_type": task_type, "q": search, "task_types": TASK_TYPES,
        "can_edit": roles.may(request.user, roles.EDIT_DATASET, dataset),
    })


@pages("datasets/<int:pk>/templates/", name="dataset-templates", role=roles.EDIT_DATASET)
def dataset_templates(request: HttpRequest, pk: int) -> HttpResponse:
    dataset = found_or_404(selectors.dataset_get(pk), "No such dataset")
    roles.require(request.user, roles.EDIT_DATASET, dataset)
    form = DatasetTemplatesForm(request.POST or None,
                                initial={"prompt_templates": json.dumps(dataset.prompt_templates or {}, indent=1)})
    if request.method == "POST" and form.is_valid():
        services.dataset_update(dataset=dataset, user=request.user, prompt_templates=form.cleaned_data["prompt_templates"])
        messages.success(request, f"Saved the prompt templates of {dataset.name}.")
        return redirect("dataset-detail", pk=pk)
    return render(request, "evaluation/dataset_templates.html", {
        "dataset": dataset, "form": form, "defaults": sorted((k or "(all)", v) for k, v in DEFAULT_TEMPLATES.items()),
    })


@pages("datasets/upload/", name="dataset-upload", role=roles.UPLOAD_DATASET)
def dataset_upload(request: HttpRequest) -> HttpResponse:
    wants_json = request.headers.get("Accept", "").startswith("application/json")
    if request.method == "POST":
        form = DatasetUploadForm(request.POST, request.FILES)
        if form.is_valid():
            upload = form.cleaned_data["file"]
            try:
                job = services.dataset_import_create(
                    data=upload.read(), filename=upload.name or "upload", default_name=form.cleaned_data["name"],
                    user=request.user,
                )
            except DatasetFileError as exc:
                form.add_error("file", str(exc))
            else:
                url = reverse("import-detail", args=[job.pk])
                if wants_json:
                    return JsonResponse({"id": job.pk, "url": url,
                                         "status_url": reverse("api-import-detail", args=[job.pk])}, status=202)
                return redirect(url)
        if wants_json:
            return JsonResponse({"error": {"code": "invalid", "fields": form.errors.get_json_data()}}, status=400)
    else:
        form = DatasetUploadForm()
    return render(request, "evaluation/dataset_upload.html", {"form": form})


@pages("imports/<int:pk>/", name="import-detail")
def import_detail(request: HttpRequest, pk: int) -> HttpResponse:
    job = found_or_404(selectors.import_get(pk), "No such import")
    return render(request, "evaluation/import_detail.html", {"job": job})


def _model_or_404(pk: int) -> LanguageModel:
    return found_or_404(selectors.model_get(pk), "No such model")


def _model_to_edit(request: HttpRequest, pk: int) -> LanguageModel:
    """The model, if the user may change it (its owner, or an admin): 404 or 403 otherwise."""
    model = _model_or_404(pk)
    roles.require(request.user, roles.EDIT_MODEL, model)
    return model


@pages("models/", name="model-list")
def model_list(request: HttpRequest) -> HttpResponse:
    return render(request, "evaluation/model_list.html", {"models": selectors.model_list()})


@pages("models/<int:pk>/", name="model-detail")
def model_detail(request: HttpRequest, pk: int) -> HttpResponse:
    model = _model_or_404(pk)
    context: dict[str, Any] = {
        "model": model, "scores": selectors.model_dataset_scores(model),
        "default_params_json": json.dumps(model.default_params or {}),
    }
    for extra in MODEL_PAGE_EXTRAS:
        context.update(extra(request, model))
    return render(request, "evaluation/model_detail.html", context)


@pages("models/new/", name="model-create", role=roles.REGISTER_MODEL)
def model_create(request: HttpRequest) -> HttpResponse:
    form = ModelForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        data = dict(form.cleaned_data)
        name = data.pop("name")
        try:
            model = services.model_create(user=request.user, name=name, **data)
        except (ServiceError, ValidationError) as exc:
            add_service_error(form, exc)
        else:
            messages.success(request, f"Registered {model.name}.")
            return redirect("model-detail", pk=model.pk)
    return render(request, "evaluation/model_form.html", {"form": form, "title": "Register a model"})


@pages("models/<int:pk>/edit/", name="model-edit", role=roles.EDIT_MODEL)
def model_edit(request: HttpRequest, pk: int) -> HttpResponse:
    model = _model_to_edit(request, pk)
    form = ModelForm(request.POST or None, instance=model)
    if request.method == "POST" and form.is_valid():
        try:
            services.model_update(model=model, user=request.user, **form.changed_fields())
        except (ServiceError, ValidationError) as exc:
            add_service_error(form, exc)
        else:
            messages.success(request, f"Saved {model.name}.")
            return redirect("model-detail", pk=model.pk)
    return render(request, "evaluation/model_form.html", {"form": form, "title": f"Edit {model.name}", "model": model})


@pages("models/<int:pk>/toggle-active/", name="model-toggle-active", role=roles.EDIT_MODEL, post_only=True)
def model_toggle_active(request: HttpRequest, pk: int) -> HttpResponse:
    model = _model_to_edit(request, pk)
    services.model_set_active(model=model, user=request.user, active=not model.is_active)
    messages.success(request, f"{model.name} is now {'active' if model.is_active else 'inactive'}.")
    return redirect("model-detail", pk=pk)


@pages("models/<int:pk>/test-connection/", name="model-test-connection", role=roles.EDIT_MODEL, post_only=True)
def model_test_connection(request: HttpRequest, pk: int) -> HttpResponse:
    model = _model_to_edit(request, pk)
    result = services.model_test_connection(model=model, user=request.user)
    (messages.success if result.ok else messages.error)(request, f"Test connection: {result.message}")
    return redirect("model-detail", pk=pk)
