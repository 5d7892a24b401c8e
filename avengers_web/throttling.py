"""Per-token rate limits for the routing endpoints: 429 with Retry-After once a token's minute is used up.

A fixed one-minute window per API token (or per user for dashboard sessions), counted in Django's cache:
one ``add`` and one ``incr`` per request. The default cache is per process; ``AVENGERS_CACHE_URL`` shares the
count between serving processes. A token's ``rate_limit_per_minute`` overrides ``AVENGERS_RATE_LIMIT_PER_MINUTE``;
0 turns the limit off. The playground counts against its user's session count, with the same limit.
"""
from __future__ import annotations

import time
from typing import Any

from django.conf import settings
from django.core.cache import cache
from rest_framework.request import Request
from rest_framework.throttling import BaseThrottle

from avengers_web.models import ApiToken

WINDOW_S = 60
clock = time.time  # the tests fix it so a run never straddles a window boundary


def take(who: str, limit: int) -> float | None:
    """Count one request of ``who`` against ``limit`` per minute; the seconds to wait when over it, else None."""
    if limit <= 0:
        return None
    now = clock()
    window = int(now // WINDOW_S)
    key = f"avengers:rate:{who}:{window}"
    cache.add(key, 0, timeout=WINDOW_S * 2)
    try:
        count = cache.incr(key)
    except ValueError:  # evicted between add and incr
        cache.set(key, 1, timeout=WINDOW_S * 2)
        count = 1
    return (window + 1) * WINDOW_S - now if count > limit else None


def retry_after(wait_s: float) -> int:
    """The whole seconds a Retry-After header (or a message) gives for ``wait_s``: rounded up, at least 1."""
    return max(1, int(wait_s + 0.999))


def take_for_user(user: Any) -> float | None:
    """The dashboard's routed queries (the playground) share the user's session count with the API."""
    return take(f"u{user.pk}", settings.RATE_LIMIT_PER_MINUTE)


class TokenRateThrottle(BaseThrottle):
    def __init__(self) -> None:
        self._wait = 0.0

    def allow_request(self, request: Request, view: Any) -> bool:
        token = request.auth if isinstance(request.auth, ApiToken) else None
        limit = settings.RATE_LIMIT_PER_MINUTE
        if token is not None and token.rate_limit_per_minute is not None:
            limit = token.rate_limit_per_minute
        if token is not None:
            who = f"t{token.pk}"
        elif request.user is not None and request.user.is_authenticated:
            who = f"u{request.user.pk}"
        else:
            who = f"a{self.get_ident(request)}"
        wait = take(who, limit)
        self._wait = wait or 0.0
        return wait is None

    def wait(self) -> float | None:
        return max(1.0, self._wait)
