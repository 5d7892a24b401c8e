"""API routes of the evaluation app (mounted under /api/v1/)."""
from __future__ import annotations

from django.urls import path

from evaluation import api, api_runs

urlpatterns = [
    path("datasets", api.DatasetListCreateApi.as_view(), name="api-datasets"),
    path("datasets/<int:pk>", api.DatasetDetailApi.as_view(), name="api-dataset-detail"),
    path("datasets/<int:pk>/queries", api.DatasetQueriesApi.as_view(), name="api-dataset-queries"),
    path("imports/<int:pk>", api.DatasetImportDetailApi.as_view(), name="api-import-detail"),
    path("models", api.ModelListCreateApi.as_view(), name="api-models"),
    path("models/<int:pk>", api.ModelDetailApi.as_view(), name="api-model-detail"),
    path("models/<int:pk>/test-connection", api.ModelTestConnectionApi.as_view(), name="api-model-test-connection"),
    path("evaluations", api_runs.RunListCreateApi.as_view(), name="api-evaluations"),
    path("evaluations/<int:pk>", api_runs.RunDetailApi.as_view(), name="api-evaluation-detail"),
    path("evaluations/<int:pk>/cancel", api_runs.RunCancelApi.as_view(), name="api-evaluation-cancel"),
    path("evaluations/<int:pk>/resume", api_runs.RunResumeApi.as_view(), name="api-evaluation-resume"),
    path("evaluations/<int:pk>/samples", api_runs.RunSamplesApi.as_view(), name="api-evaluation-samples"),
]
