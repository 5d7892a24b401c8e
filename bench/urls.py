"""The app's URLs plus what bench/route_latency.py compares /api/v1/route with.

* ``POST /api/v1/bench-empty``: the route view's own class (same authentication, permissions, parsers,
  throttles, exception handling) with a ``post`` that parses the JSON body and answers ``{}``.
* ``GET /api/v1/bench-stats``: this worker's pid and the counters of any micro-batcher the query embedder holds.
"""
from __future__ import annotations

import os
import types
from typing import Any

from django.urls import Resolver404, path, resolve
from rest_framework.permissions import AllowAny
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from config.urls import urlpatterns as app_urlpatterns


def _route_view_class() -> type[APIView]:
    """Return the APIView class that serves POST /api/v1/route, or plain APIView (settings' defaults) if none."""
    try:
        match = resolve("/api/v1/route", urlconf="config.urls")
    except Resolver404:
        return APIView
    view_class = getattr(match.func, "view_class", None) or getattr(match.func, "cls", None)
    return view_class if isinstance(view_class, type) and issubclass(view_class, APIView) else APIView


RouteView = _route_view_class()


class EmptyApi(RouteView):  # type: ignore[misc,valid-type]
    """Everything the route view does before its handler, then nothing: the baseline of the benchmark."""

    def post(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        request.data  # noqa: B018 - parse the body, as the route view does
        return Response({})


def _batcher_stats() -> list[dict[str, Any]]:
    try:
        from routing.core.batching import MicroBatcher
        from routing.serving import embedding
    except Exception:  # noqa: BLE001 - the embedding module may not exist or load here; no counters then
        return []
    found: list[MicroBatcher] = []
    # The embedding module's own objects and the attributes and dict values one level down.
    for value in list(vars(embedding).values()):
        if isinstance(value, (type, types.ModuleType)) or callable(value):
            continue
        candidates = [value, *getattr(value, "__dict__", {}).values()]
        if isinstance(value, dict):
            candidates.extend(value.values())
        for item in candidates:
            if isinstance(item, dict):
                candidates.extend(v for v in item.values() if isinstance(v, MicroBatcher))
            elif isinstance(item, MicroBatcher) and item not in found:
                found.append(item)
    return [{"batches": s.batches, "items": s.items, "largest": s.largest, "failed": s.failed}
            for s in (b.stats() for b in found)]


class StatsApi(APIView):
    authentication_classes: list[Any] = []
    permission_classes = [AllowAny]

    def get(self, request: Request) -> Response:
        return Response({"pid": os.getpid(), "route_view": f"{RouteView.__module__}.{RouteView.__qualname__}",
                         "batchers": _batcher_stats()})


urlpatterns = [
    path("api/v1/bench-empty", EmptyApi.as_view(), name="bench-empty"),
    path("api/v1/bench-stats", StatsApi.as_view(), name="bench-stats"),
    *app_urlpatterns,
]
