"""Test settings: the real embedded PostgreSQL in its own folder, a fast password hasher."""
from __future__ import annotations

import os

# Tests get their own embedded server so they never touch the demo's data.
os.environ.setdefault("AVENGERS_DATA_DIR", os.path.join(os.path.dirname(os.path.dirname(__file__)), ".data", "test"))
# Tests run as production does: DEBUG off, with a key of their own.
os.environ.setdefault("DEBUG", "false")
os.environ.setdefault("SECRET_KEY", "test-only-" + os.urandom(16).hex())

from config.settings import *  # noqa: E402,F401,F403

PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
# Unit tests run tasks in-process; the integration tests start a real worker over Redis instead.
CELERY_TASK_ALWAYS_EAGER = envbool("CELERY_TASK_ALWAYS_EAGER", "true")
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
}

# One test database per run, so that two runs on the same embedded server never drop each other's.
DATABASES["default"]["TEST"] = {"NAME": f"test_{DATABASES['default']['NAME']}_{os.getpid()}"}
# Unit tests run inside one transaction per test: decisions are written in the request's thread there.
# The end-to-end tests switch back to the background writer that production uses.
DECISION_LOG_MODE = os.environ.get("AVENGERS_DECISION_LOG", "inline")
