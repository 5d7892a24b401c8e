"""Django admin for every evaluation table, with filters and search."""
from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import admin
from django.http import HttpRequest

from evaluation.core.secrets import url_without_credentials
from evaluation.models import (
    Dataset,
    DatasetImport,
    EvaluationBatch,
    EvaluationRun,
    EvaluationRunModel,
    GenerationCache,
    LanguageModel,
    ModelResponse,
    Query,
    QueryEmbedding,
)
from evaluation.providers import endpoint_refusal


@admin.register(Dataset)
class DatasetAdmin(admin.ModelAdmin):
    list_display = ["name", "split_seed", "created_by", "created_at", "updated_at"]
    search_fields = ["name", "description", "source"]
    list_filter = ["created_at"]


@admin.register(Query)
class QueryAdmin(admin.ModelAdmin):
    list_display = ["external_id", "dataset", "split", "task_type", "category", "short_text"]
    list_filter = ["split", "task_type", "split_source", "dataset"]
    search_fields = ["external_id", "text", "gold", "category"]
    raw_id_fields = ["dataset", "dataset_import"]
    list_select_related = ["dataset"]

    @admin.display(description="text")
    def short_text(self, obj: Query) -> str:
        return obj.text[:80]


@admin.register(QueryEmbedding)
class QueryEmbeddingAdmin(admin.ModelAdmin):
    list_display = ["query", "embedder", "dimensions", "created_at"]
    list_filter = ["embedder", "dimensions"]
    search_fields = ["query__external_id", "query__text"]
    raw_id_fields = ["query"]
    exclude = ["vector"]


class LanguageModelAdminForm(forms.ModelForm):
    base_url = forms.CharField(required=False, max_length=500,
                              help_text="OpenAI-compatible base URL, e.g. http://gpu1:8000/v1. Empty: offline model.")
    api_key = forms.CharField(required=False, widget=forms.PasswordInput(render_value=False),
                              help_text="Leave empty to keep the current key.")

    class Meta:
        model = LanguageModel
        fields = "__all__"

    def clean_api_key(self) -> str:
        value = self.cleaned_data.get("api_key") or ""
        return value or (self.instance.api_key if self.instance.pk else "")

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean()
        # As in the service: a new base URL clears the stored key unless one is typed in with it.
        new_url = (cleaned.get("base_url") or "").strip().rstrip("/")
        if self.instance.pk and not self.data.get("api_key") and new_url != self.instance.base_url.rstrip("/"):
            cleaned["api_key"] = ""
        refusal = endpoint_refusal(new_url) if new_url else None
        if refusal is not None:
            self.add_error("base_url", f"Not allowed here: {refusal}.")
        return cleaned


@admin.display(description="base URL")
def _base_url(obj: LanguageModel | GenerationCache) -> str:
    return url_without_credentials(obj.base_url)


@admin.register(LanguageModel)
class LanguageModelAdmin(admin.ModelAdmin):
    form = LanguageModelAdminForm
    list_display = ["name", _base_url, "served_model_id", "is_active", "max_concurrency", "last_check_ok"]
    list_filter = ["is_active", "last_check_ok", ("base_url", admin.EmptyFieldListFilter)]
    search_fields = ["name", "served_model_id", "base_url", "description"]
    readonly_fields = ["last_checked_at", "last_check_ok", "last_check_message", "created_at", "updated_at"]


@admin.register(ModelResponse)
class ModelResponseAdmin(admin.ModelAdmin):
    list_display = ["model", "query", "sample_index", "source", "score", "correct", "cached", "error_kind",
                    "created_at"]
    list_filter = ["source", "correct", "cached", "error_kind", "model", "query__dataset", "query__split"]
    search_fields = ["query__external_id", "text", "extracted", "error", "params_key"]
    raw_id_fields = ["query", "model", "run"]
    list_select_related = ["model", "query"]


@admin.register(DatasetImport)
class DatasetImportAdmin(admin.ModelAdmin):
    list_display = ["id", "filename", "status", "processed_lines", "total_lines", "created_by", "created_at"]
    list_filter = ["status", "created_at"]
    search_fields = ["filename", "sha256", "message"]
    exclude = ["payload"]

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> list[str]:
        return [f.name for f in DatasetImport._meta.fields if f.name != "payload"]


class EvaluationRunModelInline(admin.TabularInline):
    model = EvaluationRunModel
    extra = 0
    raw_id_fields = ["model"]
    readonly_fields = ["params", "templates", "params_keys"]


@admin.register(EvaluationRun)
class EvaluationRunAdmin(admin.ModelAdmin):
    list_display = ["id", "dataset", "split", "samples", "status", "n_queries", "created_by", "created_at", "finished_at"]
    list_filter = ["status", "split", "dataset"]
    search_fields = ["message", "dataset__name"]
    raw_id_fields = ["dataset"]
    inlines = [EvaluationRunModelInline]


@admin.register(EvaluationRunModel)
class EvaluationRunModelAdmin(admin.ModelAdmin):
    list_display = ["run", "model"]
    list_filter = ["model"]
    search_fields = ["model__name", "params_keys"]
    raw_id_fields = ["run", "model"]


@admin.register(EvaluationBatch)
class EvaluationBatchAdmin(admin.ModelAdmin):
    list_display = ["id", "run", "model", "status", "attempts", "claimed_by", "heartbeat_at", "not_before"]
    list_filter = ["status", "model"]
    search_fields = ["claimed_by", "message"]
    raw_id_fields = ["run", "model"]


@admin.register(GenerationCache)
class GenerationCacheAdmin(admin.ModelAdmin):
    list_display = ["key", "served_model", _base_url, "hits", "created_at"]
    list_filter = ["served_model"]
    search_fields = ["key", "served_model", "text"]
