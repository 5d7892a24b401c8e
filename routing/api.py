"""REST API for calibration: embedding jobs, router snapshots, their clusters, profiles and held-out results."""
from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from typing import Any

from django.conf import settings
from drf_spectacular.utils import OpenApiParameter, extend_schema, extend_schema_field, extend_schema_view
from rest_framework import serializers, status
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from avengers_web import roles
from avengers_web.api import Pagination, Stored, StoredDetailApi, paginate
from avengers_web.routes import Routes
from evaluation.api import dataset_field, datasets_field, model_field, models_field
from routing import embedding_jobs, selectors, services
from routing.core.router import ROUTERS
from routing.models import EmbeddingJob, RouterSnapshot, SnapshotProfile

endpoints = Routes()


class SnapshotOutput(serializers.ModelSerializer):
    datasets = serializers.SerializerMethodField()
    pool = serializers.SerializerMethodField()
    parent = serializers.PrimaryKeyRelatedField(read_only=True, allow_null=True)  # null: built, not derived
    created_by = serializers.CharField(source="created_by.username", allow_null=True, default=None)

    class Meta:
        model = RouterSnapshot
        fields = ["id", "version", "label", "kind", "parent", "embedder", "method", "k", "seed", "shrinkage_setting",
                  "shrinkage", "datasets", "pool", "team_size", "team", "team_chosen_by_hand", "rank_scores",
                  "first_places", "status", "stage", "progress_done", "progress_total", "message", "timings",
                  "n_train", "n_test", "is_active", "created_by", "created_at", "finished_at", "router",
                  "router_params", "router_chosen", "router_cv"]

    @extend_schema_field(serializers.ListField(child=serializers.CharField()))
    def get_datasets(self, snapshot: RouterSnapshot) -> list[str]:
        return sorted(d.name for d in snapshot.datasets.all())

    @extend_schema_field(serializers.ListField(child=serializers.CharField()))
    def get_pool(self, snapshot: RouterSnapshot) -> list[str]:
        return sorted(m.name for m in snapshot.pool.all())


SNAPSHOTS: Stored[RouterSnapshot] = Stored(selectors.snapshot_get, SnapshotOutput)


class SnapshotCreateInput(serializers.Serializer):
    datasets = datasets_field(min_length=1, help_text="Dataset names or ids.")
    models = models_field(min_length=1, help_text="The pool: names or ids.")
    embedder = serializers.CharField(default=lambda: settings.EMBEDDER, help_text="Default: AVENGERS_EMBEDDER.")
    method = serializers.CharField(default="kmeans", help_text="kmeans, agglomerative, gmm, spectral or birch.")
    k = serializers.IntegerField(default=64, min_value=1)
    seed = serializers.IntegerField(default=42)
    shrinkage = serializers.CharField(default="auto", help_text='"auto" (5-fold CV on train) or pseudo-queries.')
    team_size = serializers.IntegerField(required=False, allow_null=True, min_value=1,
                                         help_text="M: pick the top-M models by the paper's rank score.")
    team = serializers.ListField(child=serializers.CharField(), required=False, allow_null=True,
                                 help_text="Choose the team by hand instead (model names of the pool).")
    label = serializers.CharField(required=False, allow_blank=True, max_length=200, default="")
    router = serializers.CharField(default="auto", max_length=40,
                                   help_text='"auto" (chosen by 5-fold CV on train among the default candidates) or '
                                             'a registered router: ' + ", ".join(ROUTERS) + ".")
    router_params = serializers.DictField(required=False, default=dict,
                                          help_text='Parameters of a named router, e.g. {"shrinkage": 16}; '
                                                    'infinity as "inf".')


class AddModelInput(serializers.Serializer):
    model = model_field(help_text="Model name or id.")


class AddDatasetInput(serializers.Serializer):
    dataset = dataset_field(help_text="Dataset name or id.")


@endpoints("snapshots", name="api-snapshots")
class SnapshotListCreateApi(APIView):
    pagination_class = Pagination  # its GET is a page: the schema documents it so
    write_permissions = {"POST": roles.BUILD_SNAPSHOT}

    @extend_schema(operation_id="snapshots_list", responses=SnapshotOutput(many=True))
    def get(self, request: Request) -> Response:
        return paginate(request, self, selectors.snapshot_list().prefetch_related("pool"), SnapshotOutput)

    @extend_schema(operation_id="snapshots_create", request=SnapshotCreateInput, responses={201: SnapshotOutput},
                   description="Build a snapshot in a worker: embed what is missing, cluster, profile, select the "
                               "team, evaluate on the test split.")
    def post(self, request: Request) -> Response:
        serializer = SnapshotCreateInput(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = serializer.validated_data
        snapshot = services.snapshot_create(
            datasets=data["datasets"], models=data["models"], embedder=data["embedder"],
            method=data["method"], k=data["k"], seed=data["seed"], shrinkage=data["shrinkage"],
            team_size=data.get("team_size"), team=data.get("team"), label=data["label"], user=request.user,
            router=data["router"], router_params=data["router_params"],
        )
        return SNAPSHOTS.response(snapshot.pk, status.HTTP_201_CREATED)


@endpoints("snapshots/<int:pk>", name="api-snapshot-detail")
@extend_schema_view(get=extend_schema(operation_id="snapshots_retrieve"))
class SnapshotDetailApi(StoredDetailApi):
    stored = SNAPSHOTS


def _derive(request: Request, snapshot: RouterSnapshot, action: Callable[..., RouterSnapshot],
            **arguments: Any) -> Response:
    result = action(snapshot=snapshot, user=request.user, **arguments)
    return SNAPSHOTS.response(result.pk, status.HTTP_200_OK if result.pk == snapshot.pk else status.HTTP_201_CREATED)


@endpoints("snapshots/<int:pk>/activate", name="api-snapshot-activate")
class SnapshotActivateApi(APIView):
    write_permissions = {"POST": roles.ACTIVATE_SNAPSHOT}

    @extend_schema(operation_id="snapshots_activate", request=None, responses=SnapshotOutput,
                   description="Make this snapshot the one routing uses; the activation is recorded with who and when.")
    def post(self, request: Request, pk: int) -> Response:
        snapshot = SNAPSHOTS.get(pk)
        roles.require(request.user, roles.ACTIVATE_SNAPSHOT, snapshot)
        return _derive(request, snapshot, services.snapshot_activate)


class _DeriveApi(APIView):
    # POST derives a snapshot from this one with what the body names, or answers 200 with this one when nothing would
    # change. Each subclass names its body (``serializer_class``, which the schema reads too) and its service; its
    # docstring is the operation's description in the OpenAPI schema.

    write_permissions = {"POST": roles.BUILD_SNAPSHOT}
    serializer_class: type[serializers.Serializer]
    derive: Callable[..., RouterSnapshot]  # a service: (snapshot=, user=, **the body's fields) -> the snapshot

    @extend_schema(responses={201: SnapshotOutput})
    def post(self, request: Request, pk: int) -> Response:
        serializer = self.serializer_class(data=request.data)
        serializer.is_valid(raise_exception=True)
        return _derive(request, SNAPSHOTS.get(pk), type(self).derive, **serializer.validated_data)


@endpoints("snapshots/<int:pk>/add-model", name="api-snapshot-add-model")
@extend_schema_view(post=extend_schema(operation_id="snapshots_add_model"))
class SnapshotAddModelApi(_DeriveApi):
    """Derive a snapshot with the same clusters and this model's profile added; the model is evaluated first
    on the train queries it has no results for."""

    serializer_class = AddModelInput
    derive = services.snapshot_add_model


@endpoints("snapshots/<int:pk>/add-dataset", name="api-snapshot-add-dataset")
@extend_schema_view(post=extend_schema(operation_id="snapshots_add_dataset"))
class SnapshotAddDatasetApi(_DeriveApi):
    """Derive a snapshot over the union of datasets, re-clustered, after embedding the new queries and evaluating
    the pool on its train split."""

    serializer_class = AddDatasetInput
    derive = services.snapshot_add_dataset


class LeaderboardEntry(serializers.Serializer):
    model = serializers.CharField()
    rank = serializers.IntegerField()
    n = serializers.IntegerField()
    mean = serializers.FloatField(allow_null=True)
    estimate = serializers.FloatField(allow_null=True)


class ClusterOutput(serializers.Serializer):
    index = serializers.IntegerField()
    size = serializers.IntegerField()
    datasets = serializers.DictField(child=serializers.IntegerField())
    order = serializers.IntegerField()
    x = serializers.FloatField()
    y = serializers.FloatField()
    leaderboard = LeaderboardEntry(many=True)


@endpoints("snapshots/<int:pk>/clusters", name="api-snapshot-clusters")
class SnapshotClustersApi(APIView):
    @extend_schema(operation_id="snapshots_clusters_list", responses=ClusterOutput(many=True),
                   description="Every cluster with its size, datasets and the models ranked by score.")
    def get(self, request: Request, pk: int) -> Response:
        snapshot = SNAPSHOTS.get(pk)
        boards: dict[int, list[dict[str, Any]]] = defaultdict(list)
        for row in (SnapshotProfile.objects.filter(snapshot=snapshot).order_by("cluster", "rank", "model__name")
                    .values("cluster", "model__name", "rank", "n", "mean", "estimate")):
            boards[row["cluster"]].append({"model": row["model__name"], "rank": row["rank"], "n": row["n"],
                                           "mean": row["mean"], "estimate": row["estimate"]})
        clusters = [{"index": c.index, "size": c.size, "datasets": c.datasets, "order": c.order, "x": c.x, "y": c.y,
                     "leaderboard": boards[c.index]} for c in snapshot.clusters.order_by("index").defer("centroid")]
        return Response(ClusterOutput(clusters, many=True).data)


class ProfileOutput(serializers.Serializer):
    model = serializers.CharField(source="model.name")
    cluster = serializers.IntegerField()
    n = serializers.IntegerField()
    mean = serializers.FloatField(allow_null=True)
    estimate = serializers.FloatField(allow_null=True)
    rank = serializers.IntegerField()


@endpoints("snapshots/<int:pk>/profiles", name="api-snapshot-profiles")
class SnapshotProfilesApi(APIView):
    pagination_class = Pagination  # its GET is a page: the schema documents it so
    @extend_schema(operation_id="snapshots_profiles_list", responses=ProfileOutput(many=True),
                   parameters=[OpenApiParameter("model", str, description="Only this model's profile.")])
    def get(self, request: Request, pk: int) -> Response:
        profiles = SnapshotProfile.objects.filter(snapshot=SNAPSHOTS.get(pk)).select_related("model")
        model = request.query_params.get("model", "")
        if model:
            profiles = profiles.filter(model__name=model)
        return paginate(request, self, profiles.order_by("model__name", "cluster"), ProfileOutput)


class HeldoutOutput(serializers.Serializer):
    snapshot = serializers.IntegerField()
    test_queries = serializers.IntegerField()
    methods = serializers.DictField(child=serializers.DictField(),
                                    help_text="Method -> per_dataset accuracy, in_distribution, out_of_distribution.")


@endpoints("snapshots/<int:pk>/heldout", name="api-snapshot-heldout")
class SnapshotHeldoutApi(APIView):
    @extend_schema(operation_id="snapshots_heldout_retrieve", responses=HeldoutOutput,
                   description="Accuracy on the test split of the snapshot's datasets (the stored scores, no "
                               "generation), next to best single, best per dataset, random and oracle.")
    def get(self, request: Request, pk: int) -> Response:
        snapshot = SNAPSHOTS.get(pk)
        heldout = snapshot.heldout or {}
        return Response(HeldoutOutput({"snapshot": snapshot.pk, "test_queries": heldout.get("test_queries", 0),
                                       "methods": heldout.get("methods", {})}).data)


class EmbeddingJobOutput(serializers.ModelSerializer):
    datasets = serializers.SerializerMethodField()

    class Meta:
        model = EmbeddingJob
        fields = ["id", "embedder", "datasets", "status", "total", "done", "message", "created_at", "started_at",
                  "finished_at"]

    @extend_schema_field(serializers.ListField(child=serializers.CharField()))
    def get_datasets(self, job: EmbeddingJob) -> list[str]:
        return sorted(d.name for d in job.datasets.all())


@endpoints("embedding-jobs", name="api-embedding-jobs")
class EmbeddingJobCreateApi(APIView):
    write_permissions = {"POST": roles.EMBED}

    class EmbeddingJobInput(serializers.Serializer):
        datasets = datasets_field(min_length=1)
        embedder = serializers.CharField(default=lambda: settings.EMBEDDER,
                                         help_text="Default: AVENGERS_EMBEDDER.")

    @extend_schema(operation_id="embedding_jobs_create", request=EmbeddingJobInput, responses={201: EmbeddingJobOutput},
                   description="Embed, in a worker, every query of these datasets that has no vector yet.")
    def post(self, request: Request) -> Response:
        serializer = self.EmbeddingJobInput(data=request.data)
        serializer.is_valid(raise_exception=True)
        job = embedding_jobs.embedding_job_create(datasets=serializer.validated_data["datasets"],
                                                  embedder=serializer.validated_data["embedder"], user=request.user)
        return Response(EmbeddingJobOutput(job).data, status=status.HTTP_201_CREATED)


@endpoints("embedding-jobs/<int:pk>", name="api-embedding-job-detail")
@extend_schema_view(get=extend_schema(operation_id="embedding_jobs_retrieve"))
class EmbeddingJobDetailApi(StoredDetailApi):
    stored = Stored(selectors.embedding_job_get, EmbeddingJobOutput)
