"""Routes of the evaluation app: its dashboard pages (mounted at the root) and its API (under /api/v1/)."""
from __future__ import annotations

from django.urls import path

from evaluation import api, views
from evaluation.runs import api as runs_api
from evaluation.runs import views as runs_views

pages = [
    path("datasets/", views.dataset_list, name="dataset-list"),
    path("datasets/upload/", views.dataset_upload, name="dataset-upload"),
    path("datasets/<int:pk>/", views.dataset_detail, name="dataset-detail"),
    path("datasets/<int:pk>/templates/", views.dataset_templates, name="dataset-templates"),
    path("imports/<int:pk>/", views.import_detail, name="import-detail"),
    path("models/", views.model_list, name="model-list"),
    path("models/new/", views.model_create, name="model-create"),
    path("models/<int:pk>/", views.model_detail, name="model-detail"),
    path("models/<int:pk>/edit/", views.model_edit, name="model-edit"),
    path("models/<int:pk>/toggle-active/", views.model_toggle_active, name="model-toggle-active"),
    path("models/<int:pk>/test-connection/", views.model_test_connection, name="model-test-connection"),
    path("evaluations/", runs_views.evaluation_list, name="evaluation-list"),
    path("evaluations/new/", runs_views.evaluation_create, name="evaluation-create"),
    path("evaluations/<int:pk>/", runs_views.evaluation_detail, name="evaluation-detail"),
    path("evaluations/<int:pk>/cancel/", runs_views.evaluation_cancel, name="evaluation-cancel"),
    path("evaluations/<int:pk>/resume/", runs_views.evaluation_resume, name="evaluation-resume"),
    path("evaluations/<int:pk>/samples/", runs_views.evaluation_samples, name="evaluation-samples"),
]

api = [
    path("datasets", api.DatasetListCreateApi.as_view(), name="api-datasets"),
    path("datasets/<int:pk>", api.DatasetDetailApi.as_view(), name="api-dataset-detail"),
    path("datasets/<int:pk>/queries", api.DatasetQueriesApi.as_view(), name="api-dataset-queries"),
    path("imports/<int:pk>", api.DatasetImportDetailApi.as_view(), name="api-import-detail"),
    path("models", api.ModelListCreateApi.as_view(), name="api-models"),
    path("models/<int:pk>", api.ModelDetailApi.as_view(), name="api-model-detail"),
    path("models/<int:pk>/test-connection", api.ModelTestConnectionApi.as_view(), name="api-model-test-connection"),
    path("evaluations", runs_api.RunListCreateApi.as_view(), name="api-evaluations"),
    path("evaluations/<int:pk>", runs_api.RunDetailApi.as_view(), name="api-evaluation-detail"),
    path("evaluations/<int:pk>/cancel", runs_api.RunCancelApi.as_view(), name="api-evaluation-cancel"),
    path("evaluations/<int:pk>/resume", runs_api.RunResumeApi.as_view(), name="api-evaluation-resume"),
    path("evaluations/<int:pk>/samples", runs_api.RunSamplesApi.as_view(), name="api-evaluation-samples"),
]
