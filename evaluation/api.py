"""REST API for datasets, imports and model endpoints: parse input, call one service, shape output."""
from __future__ import annotations

from typing import Any

from drf_spectacular.utils import OpenApiParameter, extend_schema, extend_schema_view
from rest_framework import serializers, status
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from avengers_web import roles
from avengers_web.api import (DataclassOutput, FileValidationError, NameOrIdField, NamesOrIdsField, Pagination, Stored,
                             StoredDetailApi, paginate)
from avengers_web.errors import found_or_404
from avengers_web.routes import Routes
from evaluation import selectors, services
from evaluation.core.datasets import DatasetFileError
from evaluation.core.endpoints import normalise_base_url
from evaluation.core.sampling import ALLOWED_PARAMS
from evaluation.core.secrets import url_without_credentials
from evaluation.models import Dataset, DatasetImport, LanguageModel, Query

endpoints = Routes()


def _no_dataset(values: list[str]) -> str:
    return f"no dataset named or numbered {values[0]!r}"


def _no_model(values: list[str]) -> str:
    return f"no model named or numbered {', '.join(values)}"


def dataset_field(**kwargs: Any) -> NameOrIdField:
    """A dataset given by name or id (the input of other apps' APIs too)."""
    return NameOrIdField(lookup=selectors.datasets_by_name_or_id, unknown=_no_dataset, **kwargs)


def datasets_field(**kwargs: Any) -> NamesOrIdsField:
    return NamesOrIdsField(lookup=selectors.datasets_by_name_or_id, unknown=_no_dataset, **kwargs)


def model_field(**kwargs: Any) -> NameOrIdField:
    return NameOrIdField(lookup=selectors.models_by_name_or_id, unknown=_no_model, **kwargs)


def models_field(**kwargs: Any) -> NamesOrIdsField:
    return NamesOrIdsField(lookup=selectors.models_by_name_or_id, unknown=_no_model, **kwargs)


class DatasetOutput(serializers.ModelSerializer):
    n_queries = serializers.IntegerField(read_only=True)
    n_train = serializers.IntegerField(read_only=True)
    n_test = serializers.IntegerField(read_only=True)

    class Meta:
        model = Dataset
        fields = ["id", "name", "description", "source", "split_seed", "test_fraction", "n_queries", "n_train",
                  "n_test", "created_at", "updated_at"]


class ImportedDatasetOutput(DataclassOutput):
    class Meta:
        dataclass = services.DatasetSummary
        ref_name = "ImportedDataset"


class ImportSummaryOutput(DataclassOutput):
    datasets = ImportedDatasetOutput(many=True)

    class Meta:
        dataclass = services.ImportSummary


@endpoints("datasets", name="api-datasets")
class DatasetListCreateApi(APIView):
    pagination_class = Pagination  # its GET is a page: the schema documents it so
    write_permissions = {"POST": roles.UPLOAD_DATASET}

    class DatasetUploadInput(serializers.Serializer):
        file = serializers.FileField(help_text="JSON Lines or CSV; the records format is read in full.")
        name = serializers.CharField(required=False, allow_blank=True, max_length=100,
                                     help_text="Dataset for lines without a dataset column.")
        split_seed = serializers.IntegerField(required=False, help_text="Seed of the 70/30 split of new datasets.")

    @extend_schema(operation_id="datasets_list", responses=DatasetOutput(many=True))
    def get(self, request: Request) -> Response:
        return paginate(request, self, selectors.dataset_list(), DatasetOutput)

    @extend_schema(operation_id="datasets_import", request={"multipart/form-data": DatasetUploadInput},
                   responses={201: ImportSummaryOutput})
    def post(self, request: Request) -> Response:
        serializer = self.DatasetUploadInput(data=request.data)
        serializer.is_valid(raise_exception=True)
        upload = serializer.validated_data["file"]
        try:
            summary = services.dataset_import_file(
                data=upload.read(), filename=upload.name or "", default_name=serializer.validated_data.get("name", ""),
                split_seed=serializer.validated_data.get("split_seed"), user=request.user,
            )
        except DatasetFileError as exc:
            if exc.problems[0].field == "name" and not exc.problems[0].line:
                raise serializers.ValidationError({"name": [exc.problems[0].message]}) from None
            raise FileValidationError("file", [p.as_dict() for p in exc.problems], str(exc)) from None
        return Response(ImportSummaryOutput(summary).data, status=status.HTTP_201_CREATED)


@endpoints("datasets/<int:pk>", name="api-dataset-detail")
@extend_schema_view(get=extend_schema(operation_id="datasets_retrieve"))
class DatasetDetailApi(StoredDetailApi):
    write_permissions = {"PATCH": roles.EDIT_DATASET}

    class DatasetDetailOutput(DatasetOutput):
        stats = serializers.SerializerMethodField()

        class Meta(DatasetOutput.Meta):
            fields = [*DatasetOutput.Meta.fields, "metadata", "prompt_templates", "stats"]

        def get_stats(self, obj: Dataset) -> dict[str, Any]:
            return selectors.dataset_stats(obj)

    class DatasetUpdateInput(serializers.Serializer):
        description = serializers.CharField(required=False, allow_blank=True)
        prompt_templates = serializers.DictField(
            child=serializers.CharField(allow_blank=True), required=False,
            help_text="Task type -> template containing {query}; used for this dataset's queries unless the model "
                      "has its own.")

    stored = Stored(selectors.dataset_get, DatasetDetailOutput)

    @extend_schema(operation_id="datasets_partial_update", request=DatasetUpdateInput, responses=DatasetDetailOutput)
    def patch(self, request: Request, pk: int) -> Response:
        dataset = self.stored.get(pk)
        roles.require(request.user, roles.EDIT_DATASET, dataset)
        serializer = self.DatasetUpdateInput(data=request.data, partial=True)
        serializer.is_valid(raise_exception=True)
        services.dataset_update(dataset=dataset, user=request.user, **serializer.validated_data)
        return self.stored.response(pk)


class QueryOutput(serializers.ModelSerializer):
    scores = serializers.SerializerMethodField()

    class Meta:
        model = Query
        fields = ["id", "external_id", "text", "gold", "task_type", "category", "split", "split_source",
                  "metadata", "scores"]

    def get_scores(self, obj: Query) -> dict[str, float]:
        return self.context.get("scores", {}).get(obj.pk, {})


@endpoints("datasets/<int:pk>/queries", name="api-dataset-queries")
class DatasetQueriesApi(APIView):
    pagination_class = Pagination  # its GET is a page: the schema documents it so
    @extend_schema(operation_id="datasets_queries_list", responses=QueryOutput(many=True), parameters=[
        OpenApiParameter("split", str, enum=["train", "test"]),
        OpenApiParameter("task_type", str),
        OpenApiParameter("search", str, description="Substring of the text, id or gold answer."),
    ])
    def get(self, request: Request, pk: int) -> Response:
        dataset = found_or_404(selectors.dataset_get(pk))
        split = request.query_params.get("split", "")
        if split not in ("", "train", "test"):
            raise serializers.ValidationError({"split": ["must be 'train' or 'test'"]})
        queries = selectors.dataset_queries(dataset, split=split, task_type=request.query_params.get("task_type", ""),
                                            search=request.query_params.get("search", ""))
        return paginate(request, self, queries, QueryOutput,
                        context=lambda page: {"scores": selectors.query_scores([q.pk for q in page])})


@endpoints("imports/<int:pk>", name="api-import-detail")
@extend_schema_view(get=extend_schema(operation_id="imports_retrieve"))
class DatasetImportDetailApi(StoredDetailApi):
    class ImportOutput(serializers.ModelSerializer):
        errors = serializers.ListField(child=serializers.DictField())
        summary = serializers.DictField()

        class Meta:
            model = DatasetImport
            fields = ["id", "filename", "size_bytes", "status", "total_lines", "processed_lines", "message", "errors",
                      "summary", "created_at", "finished_at"]
            read_only_fields = fields

    stored = Stored(selectors.import_get, ImportOutput)


class ModelOutput(serializers.ModelSerializer):
    base_url = serializers.SerializerMethodField()
    has_api_key = serializers.SerializerMethodField()
    is_offline = serializers.BooleanField(read_only=True)
    n_responses = serializers.IntegerField(read_only=True)

    class Meta:
        model = LanguageModel
        fields = ["id", "name", "base_url", "served_model_id", "has_api_key", "default_params", "prompt_templates",
                  "max_concurrency",
                  "cost_input_per_mtok", "cost_output_per_mtok", "description", "is_active", "is_offline",
                  "n_responses", "last_checked_at", "last_check_ok", "last_check_message", "created_at", "updated_at"]

    def get_base_url(self, obj: LanguageModel) -> str:
        return url_without_credentials(obj.base_url)

    def get_has_api_key(self, obj: LanguageModel) -> bool:
        return bool(obj.api_key)


MODELS: Stored[LanguageModel] = Stored(selectors.model_get, ModelOutput)


class ModelInput(serializers.Serializer):
    name = serializers.CharField(max_length=200)
    base_url = serializers.CharField(required=False, allow_blank=True, max_length=500,
                                    help_text="OpenAI-compatible base URL such as http://gpu1:8000/v1 (no "
                                              "user:password@); empty: offline. A new base URL clears the stored "
                                              "API key unless api_key is sent with it.")
    served_model_id = serializers.CharField(required=False, allow_blank=True, max_length=300)
    api_key = serializers.CharField(required=False, allow_blank=True, max_length=500, write_only=True,
                                    help_text="Write-only: never returned.")
    default_params = serializers.DictField(required=False,
                                           help_text=f"Sampling defaults; keys: {', '.join(ALLOWED_PARAMS)}.")
    prompt_templates = serializers.DictField(
        child=serializers.CharField(allow_blank=True), required=False,
        help_text="Task type (math, mcq, code, label, qa, exact, or \"\" for all) -> template containing {query} "
                  "(and {choices} for options); overrides the dataset's and the default templates.")
    max_concurrency = serializers.IntegerField(required=False, min_value=1, max_value=10000)
    cost_input_per_mtok = serializers.DecimalField(required=False, allow_null=True, max_digits=12, decimal_places=4,
                                                   min_value=0)
    cost_output_per_mtok = serializers.DecimalField(required=False, allow_null=True, max_digits=12, decimal_places=4,
                                                    min_value=0)
    description = serializers.CharField(required=False, allow_blank=True)
    is_active = serializers.BooleanField(required=False)

    def validate_base_url(self, value: str) -> str:
        try:
            return normalise_base_url(value)
        except ValueError as exc:
            raise serializers.ValidationError(f"The URL {exc}.") from None


@endpoints("models", name="api-models")
class ModelListCreateApi(APIView):
    pagination_class = Pagination  # its GET is a page: the schema documents it so
    write_permissions = {"POST": roles.REGISTER_MODEL}

    @extend_schema(operation_id="models_list", responses=ModelOutput(many=True),
                   parameters=[OpenApiParameter("active", bool)])
    def get(self, request: Request) -> Response:
        active = request.query_params.get("active")
        flag = None if active is None else active.lower() in ("1", "true", "yes")
        return paginate(request, self, selectors.model_list(active=flag), ModelOutput)

    @extend_schema(operation_id="models_create", request=ModelInput, responses={201: ModelOutput})
    def post(self, request: Request) -> Response:
        serializer = ModelInput(data=request.data)
        serializer.is_valid(raise_exception=True)
        model = services.model_create(user=request.user, **serializer.validated_data)
        return MODELS.response(model.pk, status.HTTP_201_CREATED)


@endpoints("models/<int:pk>", name="api-model-detail")
@extend_schema_view(get=extend_schema(operation_id="models_retrieve"))
class ModelDetailApi(StoredDetailApi):
    write_permissions = {"PATCH": roles.EDIT_MODEL, "DELETE": roles.EDIT_MODEL}
    stored = MODELS

    @extend_schema(operation_id="models_partial_update", request=ModelInput(partial=True), responses=ModelOutput)
    def patch(self, request: Request, pk: int) -> Response:
        model = MODELS.get(pk)
        roles.require(request.user, roles.EDIT_MODEL, model)
        serializer = ModelInput(data=request.data, partial=True)
        serializer.is_valid(raise_exception=True)
        services.model_update(model=model, user=request.user, **serializer.validated_data)
        return MODELS.response(pk)

    @extend_schema(operation_id="models_deactivate", responses={204: None},
                   description="Deactivate the model. Its responses and grades are kept; PATCH is_active to undo.")
    def delete(self, request: Request, pk: int) -> Response:
        model = MODELS.get(pk)
        roles.require(request.user, roles.EDIT_MODEL, model)
        services.model_set_active(model=model, user=request.user, active=False)
        return Response(status=status.HTTP_204_NO_CONTENT)


@endpoints("models/<int:pk>/test-connection", name="api-model-test-connection")
class ModelTestConnectionApi(APIView):
    write_permissions = {"POST": roles.EDIT_MODEL}

    class ConnectionCheckOutput(serializers.Serializer):
        ok = serializers.BooleanField()
        message = serializers.CharField()
        models = serializers.ListField(child=serializers.CharField())
        latency_ms = serializers.FloatField(allow_null=True)

    @extend_schema(operation_id="models_test_connection", request=None, responses=ConnectionCheckOutput)
    def post(self, request: Request, pk: int) -> Response:
        model = MODELS.get(pk)
        roles.require(request.user, roles.EDIT_MODEL, model)
        result = services.model_test_connection(model=model, user=request.user)
        return Response(self.ConnectionCheckOutput({"ok": result.ok, "message": result.message, "models": list(result.models),
                                               "latency_ms": result.latency_ms}).data)
