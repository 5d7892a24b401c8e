"""GET /metrics: the Prometheus metrics of every process, for the addresses and the token the settings allow.

The metrics themselves live beside what they measure (routing.metrics, evaluation.metrics). With
PROMETHEUS_MULTIPROC_DIR set (gunicorn: config/gunicorn_conf.py), each process writes its values to files
there and this view adds up the files of all of them, so that any worker answers for the whole server.
"""
from __future__ import annotations

import functools
import hmac
import ipaddress
from collections.abc import Sequence

from django.conf import settings
from django.contrib.auth.decorators import login_not_required
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_safe
from prometheus_client import REGISTRY, CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector

import evaluation.metrics
import routing.metrics  # noqa: F401 - defines the routing metrics in this process

# Headers a reverse proxy adds: behind one, the peer address is the proxy's, and says nothing about the client.
_PROXY_HEADERS = ("HTTP_X_FORWARDED_FOR", "HTTP_FORWARDED", "HTTP_X_REAL_IP")

_scraped = CollectorRegistry(auto_describe=False)  # what is read at each scrape instead of counted in a process
_scraped.register(evaluation.metrics.QueueDepthCollector())


@functools.lru_cache(maxsize=8)
def _networks(cidrs: Sequence[str]) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    return tuple(ipaddress.ip_network(cidr, strict=False) for cidr in cidrs)


def _address_allowed(request: HttpRequest) -> bool:
    if any(request.META.get(header) for header in _PROXY_HEADERS):
        return False
    try:
        address = ipaddress.ip_address(request.META.get("REMOTE_ADDR", ""))
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return any(address in network for network in _networks(tuple(settings.METRICS_ALLOW)))


def _token_given(request: HttpRequest) -> bool:
    expected = settings.METRICS_TOKEN
    scheme, _, token = request.META.get("HTTP_AUTHORIZATION", "").partition(" ")
    return bool(expected) and scheme.lower() == "bearer" and hmac.compare_digest(token.strip().encode(),
                                                                                 expected.encode())


def _registries() -> list[CollectorRegistry]:
    if not settings.METRICS_MULTIPROC_DIR:
        return [REGISTRY, _scraped]
    merged = CollectorRegistry(auto_describe=False)
    MultiProcessCollector(merged, path=settings.METRICS_MULTIPROC_DIR)
    return [merged, _scraped]


@login_not_required
@never_cache
@require_safe
def metrics(request: HttpRequest) -> HttpResponse:
    """Serve the metrics to an allowed address or a request with the metrics token; refuse everyone else."""
    if not (_address_allowed(request) or _token_given(request)):
        if settings.METRICS_TOKEN:
            response = JsonResponse(
                {"detail": "Send the metrics token: Authorization: Bearer <AVENGERS_METRICS_TOKEN>."}, status=401)
            response["WWW-Authenticate"] = 'Bearer realm="metrics"'
            return response
        return JsonResponse({"detail": "Metrics are served only to the addresses in AVENGERS_METRICS_ALLOW, or with "
                                       "AVENGERS_METRICS_TOKEN."}, status=403)
    body = b"".join(generate_latest(registry) for registry in _registries())
    return HttpResponse(body, content_type=CONTENT_TYPE_LATEST)
