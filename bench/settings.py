"""Settings for bench/route_latency.py: the app's own settings, with an empty endpoint next to the real URLs."""
from __future__ import annotations

from config.settings import *  # noqa: F403
from config.settings import DATABASES, envint

ROOT_URLCONF = "bench.urls"
# Production sets DB_CONN_MAX_AGE (docker/.env.example: 60) for its DATABASE_URL; the embedded database of
# the app's settings ignores it, so apply it here too: the benchmark serves the way production does.
DATABASES["default"]["CONN_MAX_AGE"] = envint("DB_CONN_MAX_AGE", "0")
