"""API routes of the routing app (mounted under /api/v1/)."""
from __future__ import annotations

from django.urls import path

from routing import api, api_serving

urlpatterns = [
    path("route", api_serving.RouteApi.as_view(), name="api-route"),
    path("answer", api_serving.AnswerApi.as_view(), name="api-answer"),
    path("snapshots", api.SnapshotListCreateApi.as_view(), name="api-snapshots"),
    path("snapshots/<int:pk>", api.SnapshotDetailApi.as_view(), name="api-snapshot-detail"),
    path("snapshots/<int:pk>/activate", api.SnapshotActivateApi.as_view(), name="api-snapshot-activate"),
    path("snapshots/<int:pk>/add-model", api.SnapshotAddModelApi.as_view(), name="api-snapshot-add-model"),
    path("snapshots/<int:pk>/add-dataset", api.SnapshotAddDatasetApi.as_view(), name="api-snapshot-add-dataset"),
    path("snapshots/<int:pk>/clusters", api.SnapshotClustersApi.as_view(), name="api-snapshot-clusters"),
    path("snapshots/<int:pk>/profiles", api.SnapshotProfilesApi.as_view(), name="api-snapshot-profiles"),
    path("snapshots/<int:pk>/heldout", api.SnapshotHeldoutApi.as_view(), name="api-snapshot-heldout"),
    path("embedding-jobs", api.EmbeddingJobCreateApi.as_view(), name="api-embedding-jobs"),
    path("embedding-jobs/<int:pk>", api.EmbeddingJobDetailApi.as_view(), name="api-embedding-job-detail"),
]
