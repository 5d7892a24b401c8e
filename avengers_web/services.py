"""Platform services: API tokens and the activity log."""
from __future__ import annotations

import hashlib
import secrets
from datetime import timedelta

from django.contrib.auth.models import AbstractBaseUser, AnonymousUser
from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from avengers_web.models import Activity, ApiToken

TOKEN_PREFIX = "avk_"
LAST_USED_EVERY_S = 60
User = AbstractBaseUser | AnonymousUser | None  # who asked for a change: a user, a visitor, or the system


def owner_of(user: User) -> AbstractBaseUser | None:
    """Return the user to record as the owner or actor: None for visitors and the system."""
    return user if user is not None and user.is_authenticated else None


def hash_token(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


MAX_TOKEN_DAYS = 3650


@transaction.atomic
def api_token_create(*, user: AbstractBaseUser, name: str = "", key: str | None = None, read_only: bool = False,
                     expires_in_days: int | None = None) -> tuple[ApiToken, str]:
    """Create a token for ``user``; return it with its plain key, which is shown this once.

    The token acts with its user's role; ``read_only`` limits it to reads (GET), and ``expires_in_days`` ends it.
    """
    if expires_in_days is not None and not 1 <= expires_in_days <= MAX_TOKEN_DAYS:
        raise ValueError(f"a token expires after 1 to {MAX_TOKEN_DAYS} days (or never)")
    key = key or TOKEN_PREFIX + secrets.token_urlsafe(32)
    if len(key) < 16:
        raise ValueError("an API token must be at least 16 characters long")
    expires_at = timezone.now() + timedelta(days=expires_in_days) if expires_in_days else None
    existing = ApiToken.objects.filter(key_hash=hash_token(key)).first()
    if existing is not None:
        if existing.user_id != user.pk:
            raise ValueError("that token already belongs to another user")
        existing.revoked_at, existing.read_only, existing.expires_at = None, read_only, expires_at
        existing.save(update_fields=["revoked_at", "read_only", "expires_at"])
        return existing, key
    token = ApiToken.objects.create(user=user, name=name, key_hash=hash_token(key), prefix=key[:8],
                                    read_only=read_only, expires_at=expires_at)
    activity_record(actor=user, verb="created an API token", target=token.prefix + "…")
    return token, key


def api_token_authenticate(key: str) -> ApiToken | None:
    """Return the live token for ``key`` (not revoked, not expired, its user active), recording its use, or None."""
    now = timezone.now()
    token = (
        ApiToken.objects.select_related("user")
        .filter(key_hash=hash_token(key), revoked_at__isnull=True, user__is_active=True)
        .filter(Q(expires_at__isnull=True) | Q(expires_at__gt=now))
        .first()
    )
    if token is not None:
        # At most one write a minute per token: a busy token must not turn every request into an UPDATE.
        if token.last_used_at is None or (now - token.last_used_at).total_seconds() >= LAST_USED_EVERY_S:
            ApiToken.objects.filter(pk=token.pk).update(last_used_at=now)
            token.last_used_at = now
    return token


def api_token_revoke(*, token: ApiToken) -> None:
    ApiToken.objects.filter(pk=token.pk, revoked_at__isnull=True).update(revoked_at=timezone.now())


def activity_record(*, actor: User, verb: str, target: str, url: str = "") -> Activity:
    return Activity.objects.create(actor=owner_of(actor), verb=verb, target=target[:300], url=url)
