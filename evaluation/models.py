"""Datasets, their queries and embeddings, model endpoints, and the models' graded responses."""
from __future__ import annotations

from django.core.exceptions import ValidationError
from django.core.validators import MinValueValidator, RegexValidator
from django.db import models
from pgvector.django import VectorField

from avengers_web.models import BackgroundJob, NamedResource, job_statuses
from evaluation.core.datasets import NAME_PATTERN, SPLITS, TASK_TYPES
from evaluation.core.endpoints import normalise_base_url
from evaluation.core.prompts import validate_templates

name_validator = RegexValidator(
    NAME_PATTERN, "Use letters, digits, '.', '_', '-', ':' or '/', starting with a letter or digit."
)


def validate_templates_field(value: object) -> None:
    try:
        validate_templates(value)
    except ValueError as exc:
        raise ValidationError(str(exc)) from None


def validate_base_url(value: str) -> None:
    try:
        normalise_base_url(value)
    except ValueError as exc:
        raise ValidationError(f"The URL {exc}.") from None


class Dataset(NamedResource):
    name = models.CharField(max_length=100, unique=True, validators=[name_validator])
    description = models.TextField(blank=True)
    source = models.TextField(blank=True, help_text="Where the data comes from, and its licence.")
    split_seed = models.IntegerField(help_text="Seed of the 70/30 split of queries that came without one.")
    test_fraction = models.FloatField(default=0.3)
    metadata = models.JSONField(default=dict, blank=True)
    prompt_templates = models.JSONField(
        default=dict, blank=True, validators=[validate_templates_field],
        help_text='Task type -> template with {query}; overrides the defaults for this dataset\'s queries.',
    )


class Query(models.Model):
    class Split(models.TextChoices):
        TRAIN = "train"
        TEST = "test"

    class SplitSource(models.TextChoices):
        FILE = "file", "given in the file"
        SEEDED = "seeded", "seeded 70/30 split"

    dataset = models.ForeignKey(Dataset, on_delete=models.CASCADE, related_name="queries")
    external_id = models.CharField(max_length=255, help_text="The id from the file, unique in the dataset.")
    text = models.TextField()
    text_hash = models.CharField(max_length=64, db_index=True, help_text="SHA-256 of the text.")
    gold = models.TextField(blank=True)
    task_type = models.CharField(max_length=20, blank=True, choices=[(t, t) for t in TASK_TYPES])
    category = models.CharField(max_length=100, blank=True)
    split = models.CharField(max_length=5, choices=Split.choices)
    split_source = models.CharField(max_length=10, choices=SplitSource.choices)
    metadata = models.JSONField(default=dict, blank=True)
    dataset_import = models.ForeignKey(
        "DatasetImport", null=True, blank=True, on_delete=models.SET_NULL, related_name="queries"
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["dataset_id", "id"]
        verbose_name_plural = "queries"
        constraints = [
            models.UniqueConstraint(fields=["dataset", "external_id"], name="query_unique_external_id"),
            models.CheckConstraint(condition=models.Q(split__in=SPLITS), name="query_split_valid"),
        ]
        indexes = [models.Index(fields=["dataset", "split"])]

    def __str__(self) -> str:
        return f"{self.dataset.name}/{self.external_id}"


class QueryEmbedding(models.Model):
    """A query's vector under one embedder; several embedders (of any dimension) can coexist."""

    query = models.ForeignKey(Query, on_delete=models.CASCADE, related_name="embeddings")
    embedder = models.CharField(max_length=100)
    dimensions = models.PositiveIntegerField()
    vector = VectorField()
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["query", "embedder"], name="embedding_unique_per_embedder")]
        indexes = [models.Index(fields=["embedder"])]

    def __str__(self) -> str:
        return f"{self.query_id} @ {self.embedder}"


class LanguageModel(NamedResource):
    """A model the platform can call (an OpenAI-compatible endpoint) or an offline one known from records."""

    name = models.CharField(max_length=200, unique=True, validators=[name_validator])
    base_url = models.CharField(
        max_length=500, blank=True, validators=[validate_base_url], help_text="OpenAI-compatible base URL, e.g. http://gpu1:8000/v1. Empty: offline."
    )
    served_model_id = models.CharField(max_length=300, blank=True, help_text="The id the server knows it by.")
    api_key = models.CharField(max_length=500, blank=True, help_text="Sent as a bearer token; never shown again.")
    default_params = models.JSONField(default=dict, blank=True)
    prompt_templates = models.JSONField(
        default=dict, blank=True, validators=[validate_templates_field],
        help_text="Task type -> template with {query}; overrides the dataset's and the default templates.",
    )
    max_concurrency = models.PositiveIntegerField(default=8, validators=[MinValueValidator(1)])
    cost_input_per_mtok = models.DecimalField(max_digits=12, decimal_places=4, null=True, blank=True)
    cost_output_per_mtok = models.DecimalField(max_digits=12, decimal_places=4, null=True, blank=True)
    description = models.TextField(blank=True)
    metadata = models.JSONField(default=dict, blank=True)
    is_active = models.BooleanField(default=True)
    last_checked_at = models.DateTimeField(null=True, blank=True)
    last_check_ok = models.BooleanField(null=True, blank=True)
    last_check_message = models.TextField(blank=True)

    def __repr__(self) -> str:
        # Never let the API key reach a log line through repr().
        return f"<LanguageModel {self.pk}: {self.name}>"

    @property
    def is_offline(self) -> bool:
        return not self.base_url

    @property
    def model_id(self) -> str:
        return self.served_model_id or self.name


class ModelResponse(models.Model):
    """One sample of one model on one query, with its grade; imported from records or generated."""

    class Source(models.TextChoices):
        IMPORTED = "imported"
        GENERATED = "generated"

    model = models.ForeignKey(LanguageModel, on_delete=models.CASCADE, related_name="responses")
    query = models.ForeignKey(Query, on_delete=models.CASCADE, related_name="responses")
    sample_index = models.PositiveIntegerField(default=0)
    params_key = models.CharField(
        max_length=32, blank=True, default="",
        help_text="Which sampling parameters and template made it (empty: imported). Part of the unique key.",
    )
    source = models.CharField(max_length=10, choices=Source.choices)
    run = models.ForeignKey("EvaluationRun", null=True, blank=True, on_delete=models.SET_NULL, related_name="responses",
                            help_text="The evaluation run that generated it.")
    cached = models.BooleanField(default=False, help_text="Answered from the response cache, not the server.")
    attempts = models.PositiveSmallIntegerField(null=True, blank=True, help_text="HTTP attempts it took.")
    error_kind = models.CharField(max_length=20, blank=True)
    prompt = models.TextField(blank=True)
    text = models.TextField(blank=True)
    params = models.JSONField(default=dict, blank=True)
    finish_reason = models.CharField(max_length=30, blank=True)
    prompt_tokens = models.PositiveIntegerField(null=True, blank=True)
    completion_tokens = models.PositiveIntegerField(null=True, blank=True)
    latency_ms = models.FloatField(null=True, blank=True)
    cost_usd = models.DecimalField(max_digits=14, decimal_places=8, null=True, blank=True)
    error = models.TextField(blank=True)
    extracted = models.TextField(null=True, blank=True)
    score = models.FloatField(null=True, blank=True)
    correct = models.BooleanField(null=True, blank=True)
    grade_reason = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["query_id", "model_id", "sample_index"]
        constraints = [
            models.UniqueConstraint(fields=["model", "query", "sample_index", "params_key"],
                                    name="response_unique_sample_params"),
            models.CheckConstraint(
                condition=models.Q(score__isnull=True) | models.Q(score__gte=0, score__lte=1),
                name="response_score_in_unit_interval",
            ),
        ]
        indexes = [models.Index(fields=["query", "model"]), models.Index(fields=["model", "params_key"])]

    def __str__(self) -> str:
        return f"{self.model_id}/{self.query_id}#{self.sample_index}"

    @property
    def failed(self) -> bool:
        return bool(self.error)


class DatasetImport(BackgroundJob):
    """An upload being validated and written by a worker; the dashboard polls it for progress."""

    Status = job_statuses("pending", "validating", "writing", "done", "failed")

    filename = models.CharField(max_length=255)
    size_bytes = models.PositiveBigIntegerField()
    sha256 = models.CharField(max_length=64)
    payload = models.BinaryField(help_text="The uploaded bytes; cleared once imported.")
    default_name = models.CharField(max_length=100, blank=True)
    status = models.CharField(max_length=12, choices=Status.choices, default=Status.PENDING)
    total_lines = models.PositiveIntegerField(null=True, blank=True)
    processed_lines = models.PositiveIntegerField(default=0)
    message = models.TextField(blank=True)
    errors = models.JSONField(default=list, blank=True)
    summary = models.JSONField(default=dict, blank=True)

    def __str__(self) -> str:
        return f"import {self.pk} of {self.filename} ({self.status})"


class EvaluationRun(BackgroundJob):
    """Models x one dataset's split x samples, generated and graded by workers; resumable and cancellable."""

    Status = job_statuses("pending", "running", "cancelled", "done")
    ENDED = ("cancelled", "done")

    class Split(models.TextChoices):
        TRAIN = "train"
        TEST = "test"
        ALL = "all"

    dataset = models.ForeignKey(Dataset, on_delete=models.CASCADE, related_name="evaluation_runs")
    split = models.CharField(max_length=5, choices=Split.choices, default=Split.TRAIN)
    samples = models.PositiveIntegerField(default=1, validators=[MinValueValidator(1)])
    params = models.JSONField(default=dict, blank=True, help_text="Sampling parameters sent with every request.")
    use_cache = models.BooleanField(default=True, help_text="Answer seeded requests from the response cache.")
    limit = models.PositiveIntegerField(null=True, blank=True, help_text="Only the first N queries of the split.")
    n_queries = models.PositiveIntegerField(default=0)
    max_query_id = models.BigIntegerField(default=0, help_text="Queries added to the dataset later are not in the run.")
    batch_size = models.PositiveIntegerField(default=25)
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.PENDING)
    message = models.TextField(blank=True)
    language_models = models.ManyToManyField(LanguageModel, through="EvaluationRunModel", related_name="evaluation_runs")
    started_at = models.DateTimeField(null=True, blank=True, help_text="When it was last started or resumed.")
    completed_at_start = models.PositiveIntegerField(default=0, help_text="Samples already finished when (re)started.")

    def __str__(self) -> str:
        return f"run {self.pk} on {self.dataset_id} ({self.status})"

    @property
    def is_active(self) -> bool:
        return self.status in (self.Status.PENDING, self.Status.RUNNING)


class EvaluationRunModel(models.Model):
    """One model of a run, with the template and parameters key its responses are stored under."""

    run = models.ForeignKey(EvaluationRun, on_delete=models.CASCADE, related_name="run_models")
    model = models.ForeignKey(LanguageModel, on_delete=models.CASCADE, related_name="run_models")
    params = models.JSONField(default=dict, help_text="The model's defaults overridden by the run's parameters.")
    templates = models.JSONField(default=dict, help_text="Task type -> the template used (a snapshot).")
    params_keys = models.JSONField(default=dict, help_text="Task type -> the params_key its responses are stored under.")

    class Meta:
        ordering = ["model__name"]
        constraints = [models.UniqueConstraint(fields=["run", "model"], name="run_model_unique")]

    def __str__(self) -> str:
        return f"{self.run_id}/{self.model_id}"


class EvaluationBatch(models.Model):
    """A slice of a run's queries for one model: the unit a worker claims, heartbeats and finishes."""

    Status = job_statuses("pending", "running", "done")

    run = models.ForeignKey(EvaluationRun, on_delete=models.CASCADE, related_name="batches")
    model = models.ForeignKey(LanguageModel, on_delete=models.CASCADE, related_name="+")
    query_ids = models.JSONField(default=list)
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.PENDING)
    attempts = models.PositiveIntegerField(default=0)
    claimed_by = models.CharField(max_length=200, blank=True)
    claimed_at = models.DateTimeField(null=True, blank=True)
    heartbeat_at = models.DateTimeField(null=True, blank=True)
    not_before = models.DateTimeField(null=True, blank=True, help_text="Wait until then (an open circuit).")
    message = models.TextField(blank=True)

    class Meta:
        ordering = ["id"]
        verbose_name_plural = "evaluation batches"
        indexes = [models.Index(fields=["run", "model", "status"]), models.Index(fields=["status", "heartbeat_at"])]

    def __str__(self) -> str:
        return f"batch {self.pk} of run {self.run_id} ({self.status})"


class GenerationCache(models.Model):
    """A stored answer to one seeded request, keyed by endpoint, served model, prompt and parameters."""

    key = models.CharField(max_length=64, unique=True)
    base_url = models.CharField(max_length=500)
    served_model = models.CharField(max_length=300)
    params = models.JSONField(default=dict)
    text = models.TextField()
    finish_reason = models.CharField(max_length=30, blank=True)
    prompt_tokens = models.PositiveIntegerField(null=True, blank=True)
    completion_tokens = models.PositiveIntegerField(null=True, blank=True)
    hits = models.PositiveIntegerField(default=0)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        verbose_name_plural = "generation cache"

    def __str__(self) -> str:
        return f"{self.served_model} {self.key[:12]}"
