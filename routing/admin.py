"""Django admin for the routing tables, with filters and search."""
from __future__ import annotations

from django.contrib import admin

from routing.models import (
    EmbeddingJob,
    RouterSnapshot,
    SnapshotActivation,
    SnapshotCluster,
    SnapshotProfile,
    SnapshotQuery,
)


@admin.register(EmbeddingJob)
class EmbeddingJobAdmin(admin.ModelAdmin):
    list_display = ["id", "embedder", "status", "done", "total", "created_by", "created_at", "finished_at"]
    list_filter = ["status", "embedder"]
    search_fields = ["embedder", "message"]


@admin.register(RouterSnapshot)
class RouterSnapshotAdmin(admin.ModelAdmin):
    list_display = ["version", "label", "kind", "status", "embedder", "method", "k", "is_active", "created_at"]
    list_filter = ["status", "kind", "is_active", "method", "embedder"]
    search_fields = ["label", "message"]
    raw_id_fields = ["parent"]
    filter_horizontal = ["datasets", "pool", "evaluation_runs"]


@admin.register(SnapshotCluster)
class SnapshotClusterAdmin(admin.ModelAdmin):
    list_display = ["snapshot", "index", "size", "dimensions", "order"]
    list_filter = ["snapshot"]
    search_fields = ["snapshot__label"]
    raw_id_fields = ["snapshot"]
    exclude = ["centroid"]


@admin.register(SnapshotQuery)
class SnapshotQueryAdmin(admin.ModelAdmin):
    list_display = ["snapshot", "query", "cluster"]
    list_filter = ["snapshot"]
    search_fields = ["query__external_id", "query__text"]
    raw_id_fields = ["snapshot", "query"]


@admin.register(SnapshotProfile)
class SnapshotProfileAdmin(admin.ModelAdmin):
    list_display = ["snapshot", "cluster", "model", "rank", "n", "mean", "estimate"]
    list_filter = ["snapshot", "model"]
    search_fields = ["model__name"]
    raw_id_fields = ["snapshot", "model"]


@admin.register(SnapshotActivation)
class SnapshotActivationAdmin(admin.ModelAdmin):
    list_display = ["snapshot", "activated_by", "activated_at"]
    list_filter = ["activated_at"]
    search_fields = ["snapshot__label", "activated_by__username"]
    raw_id_fields = ["snapshot"]
