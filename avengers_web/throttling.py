"""Per-token rate limits for the routing endpoints: 429 with Retry-After once a token's minute is used up.

A fixed one-minute window per API token (or per user for dashboard sessions), counted in Django's cache:
one ``add`` and one ``incr`` per request. The default cache is per process; ``AVENGERS_CACHE_URL`` shares the
count between serving processes. A token's ``rate_limit_per_minute`` overrides ``AVENGERS_RATE_LIMIT_PER_MINUTE``;
0 turns the limit off.
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


class TokenRateThrottle(BaseThrottle):
    def __init__(self) -> None:
        self._wait = 0.0

    def allow_request(self, request: Request, view: Any) -> bool:
        token = request.auth if isinstance(request.auth, ApiToken) else None
        limit = settings.RATE_LIMIT_PER_MINUTE
        if token is not None and token.rate_limit_per_minute is not None:
            limit = token.rate_limit_per_minute
        if limit <= 0:
            return True
        if token is not None:
            who = f"t{token.pk}"
        elif request.user is not None and request.user.is_authenticated:
            who = f"u{request.user.pk}"
        else:
            who = f"a{self.get_ident(request)}"
        now = time.time()
        window = int(now // WINDOW_S)
        key = f"avengers:rate:{who}:{window}"
        cache.add(key, 0, timeout=WINDOW_S * 2)
        try:
            count = cache.incr(key)
        except ValueError:  # evicted between add and incr
            cache.set(key, 1, timeout=WINDOW_S * 2)
            count = 1
        if count > limit:
            self._wait = (window + 1) * WINDOW_S - now
            return False
        return True

    def wait(self) -> float | None:
        return max(1.0, self._wait)
