"""Routes of the routing app: its pages (at the root), its API (under /api/v1/) and the OpenAI-compatible API (/v1/)."""
from __future__ import annotations

from django.urls import path

from routing import api, views
from routing.serving import urls as serving

pages = [
    path("snapshots/", views.snapshot_list, name="snapshot-list"),
    path("snapshots/new/", views.snapshot_create, name="snapshot-create"),
    path("snapshots/<int:pk>/", views.snapshot_detail, name="snapshot-detail"),
    path("snapshots/<int:pk>/derive/", views.snapshot_derive, name="snapshot-derive"),
    path("snapshots/<int:pk>/activate/", views.snapshot_activate, name="snapshot-activate"),
    path("snapshots/<int:pk>/clusters/", views.snapshot_clusters, name="snapshot-clusters"),
    path("snapshots/<int:pk>/clusters/<int:index>/", views.cluster_detail, name="cluster-detail"),
    path("snapshots/<int:pk>/heatmap/", views.snapshot_heatmap, name="snapshot-heatmap"),
    path("snapshots/<int:pk>/map/", views.snapshot_map, name="snapshot-map"),
    *serving.pages,
]

api = [
    *serving.api,
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

# OpenAI-compatible routes: the routing service's alone.
openai = serving.openai
