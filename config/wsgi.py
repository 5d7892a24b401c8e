"""WSGI entry point."""
from __future__ import annotations

import gc
import os

from django.core.wsgi import get_wsgi_application
from threadpoolctl import threadpool_limits

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
application = get_wsgi_application()
# A request is one thread's work, and the workers share the cores: numpy's BLAS must not fan a routing
# matrix-vector product out to threads that then wait for each other and for the other workers
# (with them, the dataset router's 0.3 ms product took over 4 ms under load; docs/BENCHMARKS.md).
threadpool_limits(limits=1, user_api="blas")
# Everything made so far (Django, the apps, the libraries) lives as long as the worker. Moving it out of the cyclic
# garbage collector's reach keeps each full collection to what requests made since, instead of a pause of
# tens of milliseconds that some request has to wait through (docs/BENCHMARKS.md, the routing service's p99).
gc.freeze()
