"""Routing tables: embedding jobs, router snapshots (clusters, assignments, capability profiles) and activations.

Query embeddings live in ``evaluation.QueryEmbedding`` so that every app can read them. A snapshot is
immutable once built: deriving one (a new model, a new dataset) makes a new snapshot.
"""
from __future__ import annotations

from django.conf import settings
from django.db import models
from pgvector.django import VectorField

from evaluation.models import Dataset, EvaluationRun, LanguageModel, Query


class EmbeddingJob(models.Model):
    """Embed every query of some datasets that has no vector yet under one embedder."""

    class Status(models.TextChoices):
        PENDING = "pending"
        RUNNING = "running"
        DONE = "done"
        FAILED = "failed"

    embedder = models.CharField(max_length=100)
    datasets = models.ManyToManyField(Dataset, related_name="embedding_jobs")
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.PENDING)
    total = models.PositiveIntegerField(default=0, help_text="Queries without a vector when the job started.")
    done = models.PositiveIntegerField(default=0)
    message = models.TextField(blank=True)
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL)
    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    heartbeat_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"embedding job {self.pk} ({self.embedder}, {self.status})"

    @property
    def is_finished(self) -> bool:
        return self.status in (self.Status.DONE, self.Status.FAILED)


class RouterSnapshot(models.Model):
    """One calibration: embedder, clustering, the queries and models it covers, clusters and profiles."""

    class Status(models.TextChoices):
        PENDING = "pending"
        EVALUATING = "evaluating", "waiting for evaluations"
        BUILDING = "building"
        DONE = "done"
        FAILED = "failed"

    class Kind(models.TextChoices):
        BUILT = "built", "built from scratch"
        ADD_MODEL = "add_model", "a model added (same clusters)"
        ADD_DATASET = "add_dataset", "a dataset added (re-clustered)"

    version = models.PositiveIntegerField(unique=True)
    label = models.CharField(max_length=200, blank=True)
    kind = models.CharField(max_length=12, choices=Kind.choices, default=Kind.BUILT)
    parent = models.ForeignKey("self", null=True, blank=True, on_delete=models.SET_NULL, related_name="children")
    embedder = models.CharField(max_length=100)
    method = models.CharField(max_length=20, default="kmeans")
    k = models.PositiveIntegerField()
    seed = models.IntegerField(default=42)
    shrinkage_setting = models.CharField(max_length=20, default="auto", help_text='"auto" (5-fold CV on train) or a number.')
    shrinkage = models.FloatField(null=True, blank=True, help_text="The shrinkage used (pseudo-queries).")
    shrinkage_cv = models.JSONField(default=dict, blank=True)
    router = models.CharField(max_length=40, default="auto",
                              help_text='"auto" (chosen by 5-fold CV on train among the default candidates) or the '
                                        'name of a registered router (routing.core.router.ROUTERS).')
    router_params = models.JSONField(default=dict, blank=True, help_text="Parameters of a named router.")
    router_chosen = models.JSONField(default=dict, blank=True,
                                     help_text="The router the snapshot routes with: name, parameters, label.")
    router_cv = models.JSONField(default=list, blank=True,
                                 help_text="Each candidate tried, in order: {label, folds: CV accuracy per fold on "
                                           "train} (router auto).")
    datasets = models.ManyToManyField(Dataset, related_name="snapshots")
    pool = models.ManyToManyField(LanguageModel, related_name="snapshots", help_text="The models profiled.")
    team_size = models.PositiveIntegerField(null=True, blank=True, help_text="M of the automatic selection.")
    team = models.JSONField(default=list, blank=True, help_text="Names of the models routed to, best first.")
    team_chosen_by_hand = models.BooleanField(default=False)
    rank_scores = models.JSONField(default=dict, blank=True, help_text="Model -> sum over clusters of 1/rank.")
    first_places = models.JSONField(default=dict, blank=True, help_text="Model -> clusters where it ranks first.")
    heldout = models.JSONField(default=dict, blank=True, help_text="Held-out results on the datasets' test split.")
    evaluation_runs = models.ManyToManyField(EvaluationRun, blank=True, related_name="snapshots")
    status = models.CharField(max_length=12, choices=Status.choices, default=Status.PENDING)
    stage = models.CharField(max_length=40, blank=True)
    progress_done = models.PositiveIntegerField(default=0)
    progress_total = models.PositiveIntegerField(default=0)
    message = models.TextField(blank=True)
    timings = models.JSONField(default=dict, blank=True, help_text="Seconds per stage of the build.")
    n_train = models.PositiveIntegerField(default=0)
    n_test = models.PositiveIntegerField(default=0)
    is_active = models.BooleanField(default=False)
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL)
    created_at = models.DateTimeField(auto_now_add=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-version"]
        constraints = [
            models.UniqueConstraint(fields=["is_active"], condition=models.Q(is_active=True),
                                    name="one_active_snapshot"),
        ]

    def __str__(self) -> str:
        return f"snapshot v{self.version}" + (f" ({self.label})" if self.label else "")

    @property
    def is_finished(self) -> bool:
        return self.status in (self.Status.DONE, self.Status.FAILED)


class SnapshotCluster(models.Model):
    """A cluster of a snapshot: its centroid (pgvector), size, the datasets it draws from, its place on the map."""

    snapshot = models.ForeignKey(RouterSnapshot, on_delete=models.CASCADE, related_name="clusters")
    index = models.PositiveIntegerField()
    centroid = VectorField()
    dimensions = models.PositiveIntegerField()
    size = models.PositiveIntegerField()
    datasets = models.JSONField(default=dict, help_text="Dataset name -> train queries of it in the cluster.")
    order = models.PositiveIntegerField(default=0, help_text="Position in the similarity ordering (heatmap).")
    x = models.FloatField(default=0.0)
    y = models.FloatField(default=0.0)

    class Meta:
        ordering = ["snapshot_id", "index"]
        constraints = [models.UniqueConstraint(fields=["snapshot", "index"], name="cluster_unique_index")]

    def __str__(self) -> str:
        return f"v{self.snapshot_id} cluster {self.index}"


class SnapshotQuery(models.Model):
    """A train query a snapshot used, its cluster, and its point on the 2-D map."""

    snapshot = models.ForeignKey(RouterSnapshot, on_delete=models.CASCADE, related_name="assignments")
    query = models.ForeignKey(Query, on_delete=models.CASCADE, related_name="snapshot_assignments")
    cluster = models.PositiveIntegerField()
    x = models.FloatField(default=0.0)
    y = models.FloatField(default=0.0)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["snapshot", "query"], name="snapshot_query_unique")]
        indexes = [models.Index(fields=["snapshot", "cluster"])]

    def __str__(self) -> str:
        return f"v{self.snapshot_id} q{self.query_id} -> {self.cluster}"


class SnapshotProfile(models.Model):
    """A model's capability in one cluster: scored train queries, mean score, robust estimate and rank."""

    snapshot = models.ForeignKey(RouterSnapshot, on_delete=models.CASCADE, related_name="profiles")
    model = models.ForeignKey(LanguageModel, on_delete=models.CASCADE, related_name="profiles")
    cluster = models.PositiveIntegerField()
    n = models.PositiveIntegerField()
    mean = models.FloatField(null=True, blank=True)
    estimate = models.FloatField(null=True, blank=True)
    rank = models.PositiveIntegerField()

    class Meta:
        ordering = ["snapshot_id", "cluster", "rank"]
        constraints = [models.UniqueConstraint(fields=["snapshot", "model", "cluster"], name="profile_unique")]
        indexes = [models.Index(fields=["snapshot", "cluster"])]

    def __str__(self) -> str:
        return f"v{self.snapshot_id} c{self.cluster} {self.model_id}: {self.mean}"


class SnapshotActivation(models.Model):
    """Who made which snapshot the active one, and when."""

    snapshot = models.ForeignKey(RouterSnapshot, on_delete=models.CASCADE, related_name="activations")
    activated_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL)
    activated_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-activated_at"]

    def __str__(self) -> str:
        return f"v{self.snapshot_id} activated at {self.activated_at:%Y-%m-%d %H:%M}"


CATEGORY_CHARS = 100  # a decision's category: the caller's label or a dataset name


class RoutingDecision(models.Model):
    """One routed request: what was asked, where it went, who answered, the votes, and how long each stage took.

    Written in bulk by a background writer after the response (``routing.decision_log``), so a slow or
    failing write never delays or fails the request it describes.
    """

    class Endpoint(models.TextChoices):
        ROUTE = "route", "POST /api/v1/route"
        ANSWER = "answer", "POST /api/v1/answer"
        CHAT = "chat", "POST /v1/chat/completions"
        PLAYGROUND = "playground", "dashboard playground"

    request_id = models.CharField(max_length=40, unique=True)
    created_at = models.DateTimeField(db_index=True)
    user = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL)
    token_prefix = models.CharField(max_length=12, blank=True)
    endpoint = models.CharField(max_length=12, choices=Endpoint.choices)
    query = models.TextField(blank=True, help_text="Empty when AVENGERS_LOG_QUERY_TEXT is off.")
    query_sha256 = models.CharField(max_length=64)
    query_chars = models.PositiveIntegerField(default=0)
    snapshot = models.ForeignKey(RouterSnapshot, null=True, blank=True, on_delete=models.SET_NULL,
                                 related_name="decisions")
    cluster = models.IntegerField(null=True, blank=True)
    similarity = models.FloatField(null=True, blank=True)
    category = models.CharField(max_length=CATEGORY_CHARS, blank=True, db_index=True,
                                help_text="The caller's label, else the dataset that dominates the cluster.")
    runner_ups = models.JSONField(default=list, blank=True, help_text="[{cluster, similarity}] after the nearest.")
    candidates = models.JSONField(default=list, blank=True,
                                  help_text="[{model, score, rank, skipped?}] in routing order.")
    strategy = models.CharField(max_length=20, blank=True)
    task_type = models.CharField(max_length=20, blank=True)
    chosen_model = models.CharField(max_length=200, blank=True, db_index=True,
                                    help_text="The model whose response was returned.")
    models_used = models.JSONField(default=list, blank=True)
    fallback = models.BooleanField(default=False, db_index=True)
    failures = models.JSONField(default=list, blank=True, help_text="[{model, kind, message}] of models that failed.")
    samples = models.JSONField(default=list, blank=True,
                               help_text="[{model, index, text, answer, key, finish_reason}].")
    tally = models.JSONField(default=list, blank=True, help_text="[[answer, votes], ...] votes descending.")
    final_answer = models.TextField(blank=True)
    agreement = models.FloatField(null=True, blank=True)
    prompt_tokens = models.PositiveIntegerField(null=True, blank=True)
    completion_tokens = models.PositiveIntegerField(null=True, blank=True)
    timings_ms = models.JSONField(default=dict, blank=True, help_text="Milliseconds by stage.")
    total_ms = models.FloatField(default=0.0)
    status_code = models.PositiveIntegerField(default=200)
    error = models.TextField(blank=True)

    class Meta:
        ordering = ["-created_at"]
        indexes = [models.Index(fields=["snapshot", "cluster"])]

    def __str__(self) -> str:
        return f"decision {self.request_id} ({self.endpoint}, {self.chosen_model or 'no model'})"
