"""WSGI entry point."""
from __future__ import annotations

import gc
import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "avengers_web.settings")
application = get_wsgi_application()
# Everything made so far (Django, the apps, the libraries) lives as long as the worker. Moving it out of the cyclic
# garbage collector's reach keeps each full collection to what requests made since, instead of a pause of
# tens of milliseconds that some request has to wait through (docs/BENCHMARKS.md, the routing service's p99).
gc.freeze()
