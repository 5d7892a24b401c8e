"""Dashboard forms for uploads, model endpoints and evaluation runs."""
from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from django import forms

from avengers_web.parsing import loads_json
from evaluation.core.prompts import validate_templates
from evaluation.core.sampling import ALLOWED_PARAMS, validate_sampling_params
from evaluation.models import Dataset, LanguageModel


class DatasetUploadForm(forms.Form):
    file = forms.FileField(help_text="JSON Lines (.jsonl) or CSV with a query column; the records format is read in full.")
    name = forms.CharField(required=False, max_length=100,
                           help_text="Dataset name for lines that have no dataset column.")


def _json_object(raw: str | None, validate: Callable[[Any], dict[str, Any]]) -> dict[str, Any]:
    """Parse a JSON text field (empty means {}) and validate it, as a form error a person can act on."""
    text = (raw or "").strip()
    if not text:
        return {}
    try:
        value = loads_json(text)
    except json.JSONDecodeError as exc:
        raise forms.ValidationError(f"not valid JSON: {exc.msg}") from None
    except ValueError as exc:  # nested too deep to parse, or a NUL that cannot be stored
        raise forms.ValidationError(str(exc)) from None
    try:
        return validate(value)
    except ValueError as exc:
        raise forms.ValidationError(str(exc)) from None


class DatasetTemplatesForm(forms.Form):
    prompt_templates = forms.CharField(
        required=False, widget=forms.Textarea(attrs={"rows": 8}), label="Prompt templates",
        help_text='JSON object: task type (math, mcq, code, label, qa, exact, or "" for all) -> template with '
                  "{query} (and {choices}). Used for this dataset's queries unless the model has its own.")

    def clean_prompt_templates(self) -> dict[str, str]:
        return _json_object(self.cleaned_data.get("prompt_templates"), validate_templates)


class ModelForm(forms.ModelForm):
    base_url = forms.CharField(required=False, max_length=500, label="Base URL",
                              help_text="OpenAI-compatible base URL, e.g. http://gpu1:8000/v1, without user:password@. "
                                        "Empty: offline model.")
    api_key = forms.CharField(required=False, widget=forms.PasswordInput(render_value=False), label="API key",
                              help_text="Sent as a bearer token. Leave empty to keep the current key; a changed base "
                                        "URL clears it unless you enter it here again.")
    default_params = forms.CharField(required=False, widget=forms.Textarea(attrs={"rows": 3}),
                                     label="Default sampling parameters",
                                     help_text=f"JSON object; keys: {', '.join(ALLOWED_PARAMS)}.")
    prompt_templates = forms.CharField(
        required=False, widget=forms.Textarea(attrs={"rows": 4}), label="Prompt templates",
        help_text='JSON object: task type (math, mcq, code, label, qa, exact, or "" for all) -> template with '
                  "{query} (and {choices}); overrides the dataset's and the default templates.")

    class Meta:
        model = LanguageModel
        labels = {"base_url": "Base URL", "served_model_id": "Served model id", "api_key": "API key",
                  "cost_input_per_mtok": "Cost per million input tokens (USD)",
                  "cost_output_per_mtok": "Cost per million output tokens (USD)",
                  "default_params": "Default sampling parameters", "max_concurrency": "Concurrency limit"}
        widgets = {"description": forms.Textarea(attrs={"rows": 3})}
        fields = ["name", "base_url", "served_model_id", "api_key", "default_params", "prompt_templates",
                  "max_concurrency", "cost_input_per_mtok", "cost_output_per_mtok", "description"]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.instance.pk:
            self.initial["default_params"] = json.dumps(self.instance.default_params or {})
            self.initial["prompt_templates"] = json.dumps(self.instance.prompt_templates or {}, indent=1)
        self.initial["api_key"] = ""

    def clean_default_params(self) -> dict[str, Any]:
        return _json_object(self.cleaned_data.get("default_params"), validate_sampling_params)

    def clean_prompt_templates(self) -> dict[str, str]:
        return _json_object(self.cleaned_data.get("prompt_templates"), validate_templates)

    def changed_fields(self) -> dict[str, Any]:
        """Return the cleaned values that differ from the instance; an empty API key keeps the old one.

        A key that was typed in is always returned, even the stored one: sent with a new base URL it is kept.
        """
        data = dict(self.cleaned_data)
        key = data.pop("api_key", "")
        changed = {k: v for k, v in data.items() if getattr(self.instance, k, None) != v}
        return {**changed, "api_key": key} if key else changed

    def _post_clean(self) -> None:
        # Model validation runs in the service; an empty API key must not wipe the stored one here.
        pass


class EvaluationRunForm(forms.Form):
    """Start an evaluation run; the service validates the run itself, the form only parses the fields."""

    dataset = forms.ModelChoiceField(queryset=Dataset.objects.none(), empty_label=None)
    models = forms.ModelMultipleChoiceField(
        queryset=LanguageModel.objects.none(), widget=forms.SelectMultiple(attrs={"size": 6}),
        help_text="Active models with an endpoint URL; hold Ctrl or Cmd to pick several.",
    )
    split = forms.ChoiceField(choices=[("train", "train"), ("test", "test"), ("all", "all")], initial="train")
    samples = forms.IntegerField(initial=1, min_value=1, help_text="Answers per query and model.")
    temperature = forms.FloatField(required=False, help_text="Empty: the model's default.")
    top_p = forms.FloatField(required=False, label="Top p", help_text="Empty: the model's default.")
    max_tokens = forms.IntegerField(required=False, label="Max tokens", help_text="Empty: the model's default.")
    seed = forms.IntegerField(required=False,
                              help_text="Makes each sample reproducible (seed + sample index) and cacheable.")
    stop = forms.CharField(required=False, widget=forms.Textarea(attrs={"rows": 2}), label="Stop sequences",
                           help_text="One per line, at most 4.")
    limit = forms.IntegerField(required=False, min_value=1, help_text="Only the first N queries of the split.")
    use_cache = forms.BooleanField(required=False, initial=True, label="Use the response cache",
                                   help_text="Answer seeded requests that were asked before from the cache.")

    PARAM_FIELDS = ("temperature", "top_p", "max_tokens", "seed", "stop")

    def __init__(self, *args: Any, datasets: Any, models: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fields["dataset"].queryset = datasets
        self.fields["dataset"].label_from_instance = (
            lambda d: f"{d.name} ({getattr(d, 'n_train', '?')} train / {getattr(d, 'n_test', '?')} test)")
        self.fields["models"].queryset = models

    def clean_stop(self) -> list[str]:
        return [line.strip() for line in (self.cleaned_data.get("stop") or "").splitlines() if line.strip()]

    def params(self) -> dict[str, Any]:
        """Return the sampling parameters that were filled in."""
        return {name: self.cleaned_data[name] for name in self.PARAM_FIELDS
                if self.cleaned_data.get(name) not in (None, "", [])}
