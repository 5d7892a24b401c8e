"""Dashboard forms for uploads and model endpoints."""
from __future__ import annotations

import json
from typing import Any

from django import forms

from evaluation.core.sampling import ALLOWED_PARAMS, validate_sampling_params
from evaluation.models import LanguageModel


class DatasetUploadForm(forms.Form):
    file = forms.FileField(help_text="JSON Lines (.jsonl) or CSV with a query column; the records format is read in full.")
    name = forms.CharField(required=False, max_length=100,
                           help_text="Dataset name for lines that have no dataset column.")


class ModelForm(forms.ModelForm):
    base_url = forms.CharField(required=False, max_length=500, label="Base URL",
                              help_text="OpenAI-compatible base URL, e.g. http://gpu1:8000/v1. Empty: offline model.")
    api_key = forms.CharField(required=False, widget=forms.PasswordInput(render_value=False), label="API key",
                              help_text="Sent as a bearer token. Leave empty to keep the current key.")
    default_params = forms.CharField(required=False, widget=forms.Textarea(attrs={"rows": 3}),
                                     label="Default sampling parameters",
                                     help_text=f"JSON object; keys: {', '.join(ALLOWED_PARAMS)}.")

    class Meta:
        model = LanguageModel
        labels = {"base_url": "Base URL", "served_model_id": "Served model id", "api_key": "API key",
                  "cost_input_per_mtok": "Cost per million input tokens (USD)",
                  "cost_output_per_mtok": "Cost per million output tokens (USD)",
                  "default_params": "Default sampling parameters", "max_concurrency": "Concurrency limit"}
        widgets = {"description": forms.Textarea(attrs={"rows": 3})}
        fields = ["name", "base_url", "served_model_id", "api_key", "default_params", "max_concurrency",
                  "cost_input_per_mtok", "cost_output_per_mtok", "description"]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.instance.pk:
            self.initial["default_params"] = json.dumps(self.instance.default_params or {})
        self.initial["api_key"] = ""

    def clean_default_params(self) -> dict[str, Any]:
        raw = (self.cleaned_data.get("default_params") or "").strip()
        if not raw:
            return {}
        try:
            value = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise forms.ValidationError(f"not valid JSON: {exc.msg}") from None
        try:
            return validate_sampling_params(value)
        except ValueError as exc:
            raise forms.ValidationError(str(exc)) from None

    def changed_fields(self) -> dict[str, Any]:
        """Return the cleaned values that differ from the instance; an empty API key keeps the old one."""
        data = dict(self.cleaned_data)
        if not data.get("api_key"):
            data.pop("api_key", None)
        return {k: v for k, v in data.items() if getattr(self.instance, k, None) != v}

    def _post_clean(self) -> None:
        # Model validation runs in the service; an empty API key must not wipe the stored one here.
        pass
