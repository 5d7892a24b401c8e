"""Platform-wide tables (API tokens, the activity log of the overview page) and the abstract bases the apps' tables
share: who made a row and when (Owned), named resources (NamedResource), background jobs (BackgroundJob)."""
from __future__ import annotations

import sys

from django.conf import settings
from django.db import models


class ApiToken(models.Model):
    """A bearer token for the REST API; only its SHA-256 is stored."""

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="api_tokens")
    name = models.CharField(max_length=100, blank=True)
    key_hash = models.CharField(max_length=64, unique=True, editable=False)
    prefix = models.CharField(max_length=12, help_text="The first characters, to tell tokens apart.")
    created_at = models.DateTimeField(auto_now_add=True)
    last_used_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)
    rate_limit_per_minute = models.PositiveIntegerField(
        null=True, blank=True,
        help_text="Routing requests (route, answer, chat) this token may make per minute; empty: the site default.")
    read_only = models.BooleanField(
        default=False, help_text="Only reads (GET): no uploads, runs, snapshots, model changes or routed queries.")
    expires_at = models.DateTimeField(null=True, blank=True, help_text="After this the token no longer works.")

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"{self.prefix}… ({self.user})"


class Activity(models.Model):
    """One line of the recent-activity feed."""

    actor = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL)
    verb = models.CharField(max_length=60)
    target = models.CharField(max_length=300)
    url = models.CharField(max_length=300, blank=True)
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)

    class Meta:
        ordering = ["-created_at"]
        verbose_name_plural = "activities"

    def __str__(self) -> str:
        return f"{self.actor or 'system'} {self.verb} {self.target}"


class Platform(models.Model):
    """No table: holds the platform-wide permissions that belong to no one model (see avengers_web.roles)."""

    class Meta:
        managed = False
        default_permissions = ()
        permissions = [("manage_others", "Can change and control objects that other users own")]


class Owned(models.Model):
    """A row a user made: who (the owner, for roles) and when; newest first unless a table says otherwise."""

    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        abstract = True
        ordering = ["-created_at"]


class NamedResource(Owned):
    """Something users register and edit by name (a dataset, a model): listed by name, shown as its name."""

    name: str
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        abstract = True
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name


def job_statuses(*values: str) -> type[models.TextChoices]:
    """The statuses a job goes through, in order: ``Status = job_statuses("pending", "done")`` in a model's body
    has ``Status.PENDING == "pending"``, as a ``class Status(models.TextChoices)`` written out would."""
    # Name the enum after where it is assigned (as the enum module itself finds its module), so that its members
    # pickle and print as EvaluationRun.Status.DONE would if it were written out.
    caller = sys._getframe(1)
    return models.TextChoices("Status", [(value.upper(), value) for value in values],
                              module=caller.f_globals["__name__"], qualname=f"{caller.f_code.co_qualname}.Status")


class BackgroundJob(Owned):
    """A job a worker runs: when it last started and when it ended (imports, evaluation runs, embedding jobs)."""

    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    status: str
    ENDED: tuple[str, ...] = ("done", "failed")  # the statuses after which the job does nothing more

    class Meta(Owned.Meta):
        abstract = True

    @property
    def is_finished(self) -> bool:
        return self.status in self.ENDED
