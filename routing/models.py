"""Routing tables: embedding jobs, router snapshots (clusters, assignments, capability profiles) and activations.

Query embeddings live in ``evaluation.QueryEmbedding`` so that every app can read them. A snapshot is
immutable once built: deriving one (a new model, a new dataset) makes a new snapshot. Its row refuses, in
``save()``, any change but its label and whether it is active, and its clusters, assignments and profiles refuse
changes once written; the build service writes what it computes with ``QuerySet.update()`` and ``bulk_create``.
"""
from __future__ import annotations

from typing import Any

from django.conf import settings
from django.db import models
from django.db.models import F
from django.db.models.signals import m2m_changed
from django.dispatch import receiver
from pgvector.django import VectorField

from avengers_web.models import BackgroundJob, Owned, job_statuses
from evaluation.models import Dataset, EvaluationRun, LanguageModel, Query


class EmbeddingJob(BackgroundJob):
    """Embed every query of some datasets that has no vector yet under one embedder."""

    Status = job_statuses("pending", "running", "done", "failed")

    embedder = models.CharField(max_length=100)
    datasets = models.ManyToManyField(Dataset, related_name="embedding_jobs")
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.PENDING)
    total = models.PositiveIntegerField(default=0, help_text="Queries without a vector when the job started.")
    done = models.PositiveIntegerField(default=0)
    message = models.TextField(blank=True)
    heartbeat_at = models.DateTimeField(null=True, blank=True)

    def __str__(self) -> str:
        return f"embedding job {self.pk} ({self.embedder}, {self.status})"


def _differs(field: models.Field[Any, Any], value: Any, stored: Any) -> bool:
    """Return whether ``value``, read as the field reads input, differs from what the database holds."""
    try:
        return bool(field.to_python(value) != stored)
    except Exception:  # noqa: BLE001 - a value the field cannot even read is a change
        return True


class SnapshotImmutable(ValueError):
    """A change to what a snapshot routes with: only the build service writes it, and only while building."""


class RouterSnapshot(Owned):
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
    revision = models.PositiveIntegerField(
        default=0, editable=False,
        help_text="Counts the changes since the build (label, activation); each web process reloads on a change.")
    finished_at = models.DateTimeField(null=True, blank=True)

    # What save() may change on an existing row; everything else is the build service's (QuerySet.update()).
    EDITABLE_FIELDS = ("label", "is_active")

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

    def save(self, *args: Any, **kwargs: Any) -> None:
        """Insert, or write the changed editable fields and bump ``revision``; refuse a change to any other field."""
        if self._state.adding or self.pk is None:
            super().save(*args, **kwargs)
            return
        # Deferred fields (not in __dict__) were neither loaded nor set: unchanged.
        fields = [f for f in self._meta.concrete_fields
                  if not f.primary_key and f.attname != "revision" and f.attname in self.__dict__]
        update_fields = kwargs.pop("update_fields", None)
        if update_fields is not None:
            names = set(update_fields)
            fields = [f for f in fields if f.name in names or f.attname in names]
        if not fields:
            return
        # The stored row, not what this object was loaded with: a build writes its row with update() meanwhile.
        stored = type(self).objects.filter(pk=self.pk).values(*(f.attname for f in fields)).first()
        if stored is None:
            super().save(*args, update_fields=update_fields, **kwargs)  # Django's own error for a vanished row
            return
        changed = [f for f in fields if _differs(f, getattr(self, f.attname), stored[f.attname])]
        refused = [f.name for f in changed if f.name not in self.EDITABLE_FIELDS]
        if refused:
            raise SnapshotImmutable(
                f"snapshot v{self.version}: {', '.join(refused)} cannot be changed; only "
                f"{' and '.join(self.EDITABLE_FIELDS)} can. Derive a new snapshot instead (add a model or a dataset, "
                "or build one).")
        if not changed:
            return
        self.revision = F("revision") + 1  # type: ignore[assignment]
        super().save(*args, update_fields=[f.name for f in changed] + ["revision"], **kwargs)
        self.refresh_from_db(fields=["revision"])


@receiver(m2m_changed, sender=RouterSnapshot.datasets.through)
@receiver(m2m_changed, sender=RouterSnapshot.pool.through)
@receiver(m2m_changed, sender=RouterSnapshot.evaluation_runs.through)
def _refuse_inputs_of_built_snapshots(sender: Any, instance: Any, action: str, reverse: bool,
                                      pk_set: set[int] | None, **kwargs: Any) -> None:
    """A built snapshot's datasets, pool and evaluation runs are what its clusters and profiles came from."""
    if action not in ("pre_add", "pre_remove", "pre_clear"):
        return
    if not reverse:
        snapshots = RouterSnapshot.objects.filter(pk=instance.pk)
    elif pk_set is not None:
        snapshots = RouterSnapshot.objects.filter(pk__in=pk_set)
    else:  # clearing from the other side: every snapshot it belongs to
        field = next(f for f in RouterSnapshot._meta.many_to_many if f.remote_field.through is sender)
        snapshots = RouterSnapshot.objects.filter(**{field.name: instance})
    built = list(snapshots.filter(clusters__isnull=False).values_list("version", flat=True).distinct())
    if built:
        raise SnapshotImmutable(f"snapshot v{min(built)} is built: its datasets, models and evaluation runs cannot "
                                "change. Derive a new snapshot instead.")


class _WrittenOnce(models.Model):
    """A row a snapshot's build writes (bulk_create) and deletes, never changes: save() refuses an update."""

    class Meta:
        abstract = True

    def save(self, *args: Any, **kwargs: Any) -> None:
        if not self._state.adding:
            raise SnapshotImmutable(f"{self}: a snapshot's clusters, assignments and profiles are written by its "
                                    "build and never changed.")
        super().save(*args, **kwargs)


class SnapshotCluster(_WrittenOnce):
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


class SnapshotQuery(_WrittenOnce):
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


class SnapshotProfile(_WrittenOnce):
    """A model's capability in one cluster: scored train queries, mean score, robust estimate and rank."""

    # In the order rows are read (Meta.ordering) and the admin lists them: snapshot, cluster, then model.
    snapshot = models.ForeignKey(RouterSnapshot, on_delete=models.CASCADE, related_name="profiles")
    cluster = models.PositiveIntegerField()
    model = models.ForeignKey(LanguageModel, on_delete=models.CASCADE, related_name="profiles")
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

    Written in bulk by a background writer after the response (``routing.serving.decision_log``), so a slow or
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
