"""REST API for evaluation runs: start, follow, cancel, resume, and browse the graded samples."""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

from drf_spectacular.utils import OpenApiParameter, extend_schema, extend_schema_field, extend_schema_view
from rest_framework import serializers, status
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from avengers_web import roles
from avengers_web.api import DataclassOutput, Pagination, Stored, StoredDetailApi, paginate
from avengers_web.routes import Routes
from evaluation import selectors
from evaluation.api import dataset_field, models_field
from evaluation.core.sampling import ALLOWED_PARAMS
from evaluation.models import EvaluationRun, ModelResponse
from evaluation.runs import services

endpoints = Routes()


class ModelProgressOutput(DataclassOutput):
    class Meta:
        dataclass = selectors.ModelProgress
        extra_kwargs = {"mean_score": {"help_text": "Mean score of the graded samples (accuracy)."}}


class ProgressOutput(DataclassOutput):
    fraction = serializers.FloatField()
    models = ModelProgressOutput(many=True)

    class Meta:
        dataclass = selectors.RunProgress
        extra_kwargs = {"rate_per_s": {"help_text": "Samples finished per second since (re)start."}}


class RunOutput(serializers.ModelSerializer):
    dataset = serializers.CharField(source="dataset.name")
    dataset_id = serializers.IntegerField()
    params = serializers.DictField()
    models = serializers.SerializerMethodField()
    created_by = serializers.CharField(source="created_by.username", allow_null=True, default=None)
    progress = serializers.SerializerMethodField()

    class Meta:
        model = EvaluationRun
        fields = ["id", "dataset", "dataset_id", "split", "samples", "params", "use_cache", "limit", "n_queries",
                  "status", "message", "models", "created_by", "created_at", "started_at", "finished_at", "progress"]
        read_only_fields = fields

    def get_models(self, run: EvaluationRun) -> list[str]:
        return [rm.model.name for rm in run.run_models.all()]

    @extend_schema_field(ProgressOutput)
    def get_progress(self, run: EvaluationRun) -> dict[str, Any]:
        return ProgressOutput(selectors.run_progress(run)).data


RUNS: Stored[EvaluationRun] = Stored(selectors.run_get, RunOutput)


class RunCreateInput(serializers.Serializer):
    dataset = dataset_field(help_text="Dataset name or id.")
    models = models_field(min_length=1, help_text="Model names or ids.")
    split = serializers.ChoiceField(choices=EvaluationRun.Split.values, default="train")
    samples = serializers.IntegerField(default=1, min_value=1, max_value=services.MAX_SAMPLES)
    params = serializers.DictField(required=False, default=dict,
                                   help_text=f"Sampling parameters; keys: {', '.join(ALLOWED_PARAMS)}. A seed makes "
                                             "each sample reproducible (seed + sample index) and cacheable.")
    use_cache = serializers.BooleanField(default=True, help_text="Answer seeded requests from the response cache.")
    limit = serializers.IntegerField(required=False, allow_null=True, min_value=1,
                                     help_text="Only the first N queries of the split.")
    batch_size = serializers.IntegerField(default=services.DEFAULT_BATCH_SIZE, min_value=1, max_value=services.MAX_BATCH_SIZE,
                                          help_text="Queries per unit of work a worker claims.")


@endpoints("evaluations", name="api-evaluations")
class RunListCreateApi(APIView):
    pagination_class = Pagination  # its GET is a page: the schema documents it so
    write_permissions = {"POST": roles.START_RUN}

    @extend_schema(operation_id="evaluations_list", responses=RunOutput(many=True),
                   parameters=[OpenApiParameter("status", str, enum=EvaluationRun.Status.values)])
    def get(self, request: Request) -> Response:
        runs = selectors.run_list(status=request.query_params.get("status", ""))
        return paginate(request, self, runs, RunOutput)

    @extend_schema(operation_id="evaluations_create", request=RunCreateInput, responses={201: RunOutput},
                   description="Evaluate models on a dataset's split: generation and grading run in Celery workers.")
    def post(self, request: Request) -> Response:
        serializer = RunCreateInput(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = serializer.validated_data
        run = services.evaluation_run_create(
            dataset=data["dataset"], models=data["models"], split=data["split"], samples=data["samples"],
            params=data["params"], use_cache=data["use_cache"], limit=data.get("limit"), batch_size=data["batch_size"],
            user=request.user,
        )
        return RUNS.response(run.pk, status.HTTP_201_CREATED)


@endpoints("evaluations/<int:pk>", name="api-evaluation-detail")
@extend_schema_view(get=extend_schema(operation_id="evaluations_retrieve"))
class RunDetailApi(StoredDetailApi):
    stored = RUNS


class _RunControlApi(APIView):
    # POST applies a service (cancel, resume) to the run and answers with the run as it is now. Each subclass names
    # its service and its operation; its docstring is the operation's description in the OpenAPI schema.

    write_permissions = {"POST": roles.CONTROL_RUN}
    change: Callable[..., EvaluationRun]  # a service: (run=, user=) -> the run

    @extend_schema(request=None, responses=RunOutput)
    def post(self, request: Request, pk: int) -> Response:
        run = RUNS.get(pk)
        roles.require(request.user, roles.CONTROL_RUN, run)
        type(self).change(run=run, user=request.user)
        return RUNS.response(pk)


@endpoints("evaluations/<int:pk>/cancel", name="api-evaluation-cancel")
@extend_schema_view(post=extend_schema(operation_id="evaluations_cancel"))
class RunCancelApi(_RunControlApi):
    """Stop the run: requests in flight finish and are saved; resume continues later."""

    change = services.evaluation_run_cancel


@endpoints("evaluations/<int:pk>/resume", name="api-evaluation-resume")
@extend_schema_view(post=extend_schema(operation_id="evaluations_resume"))
class RunResumeApi(_RunControlApi):
    """Queue again only the samples that are missing or failed."""

    change = services.evaluation_run_resume


class SampleOutput(serializers.ModelSerializer):
    model = serializers.CharField(source="model.name")
    query_id = serializers.IntegerField()
    query_external_id = serializers.CharField(source="query.external_id")
    query_text = serializers.CharField(source="query.text")
    task_type = serializers.CharField(source="query.task_type")
    gold = serializers.CharField(source="query.gold")

    class Meta:
        model = ModelResponse
        fields = ["id", "model", "query_id", "query_external_id", "query_text", "task_type", "gold", "sample_index",
                  "prompt", "text", "extracted", "correct", "score", "grade_reason", "error", "error_kind",
                  "finish_reason", "prompt_tokens", "completion_tokens", "latency_ms", "attempts", "cached", "params",
                  "created_at"]


@endpoints("evaluations/<int:pk>/samples", name="api-evaluation-samples")
class RunSamplesApi(APIView):
    pagination_class = Pagination  # its GET is a page: the schema documents it so
    @extend_schema(operation_id="evaluations_samples_list", responses=SampleOutput(many=True), parameters=[
        OpenApiParameter("model", str, description="Model name."),
        OpenApiParameter("verdict", str, enum=["correct", "wrong", "ungraded", "failed"]),
        OpenApiParameter("search", str, description="Substring of the query id, query, response or extracted answer."),
    ])
    def get(self, request: Request, pk: int) -> Response:
        run = RUNS.get(pk)
        verdict = request.query_params.get("verdict", "")
        if verdict not in ("", "correct", "wrong", "ungraded", "failed"):
            raise serializers.ValidationError({"verdict": ["must be correct, wrong, ungraded or failed"]})
        samples = selectors.run_samples(run, model=request.query_params.get("model", ""), verdict=verdict,
                                        search=request.query_params.get("search", ""))
        return paginate(request, self, samples, SampleOutput)
