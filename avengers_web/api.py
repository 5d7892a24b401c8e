"""Shared REST API pieces: pagination and JSON errors that say what is wrong and where."""
from __future__ import annotations

from typing import Any

from django.core.exceptions import PermissionDenied
from django.http import Http404, HttpRequest, JsonResponse
from rest_framework import exceptions
from rest_framework.pagination import PageNumberPagination
from rest_framework.response import Response
from rest_framework.views import exception_handler as drf_exception_handler


class Pagination(PageNumberPagination):
    page_size_query_param = "page_size"
    max_page_size = 500


def _flatten(detail: Any, prefix: str = "") -> dict[str, list[str]]:
    """Turn DRF's nested error detail into {"field.sub": ["message", ...]}."""
    if isinstance(detail, dict):
        out: dict[str, list[str]] = {}
        for key, value in detail.items():
            name = f"{prefix}.{key}" if prefix else str(key)
            out.update(_flatten(value, name))
        return out
    if isinstance(detail, list):
        if all(not isinstance(item, (dict, list)) for item in detail):
            return {prefix or "non_field_errors": [str(item) for item in detail]}
        out = {}
        for index, item in enumerate(detail):
            out.update(_flatten(item, f"{prefix}[{index}]"))
        return out
    return {prefix or "non_field_errors": [str(detail)]}


def exception_handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    """Answer every API error as {"error": {"code", "message", "fields"?, ...}}."""
    if isinstance(exc, Http404):
        exc = exceptions.NotFound()
    elif isinstance(exc, PermissionDenied):
        exc = exceptions.PermissionDenied()
    response = drf_exception_handler(exc, context)
    if response is None:
        return None
    if isinstance(exc, exceptions.ValidationError):
        fields = _flatten(exc.detail)
        message = "; ".join(
            f"{name}: {' '.join(msgs)}" if name != "non_field_errors" else " ".join(msgs)
            for name, msgs in fields.items()
        )
        body: dict[str, Any] = {"code": "invalid", "message": message, "fields": fields}
        extra = getattr(exc, "extra", None)
        if extra:
            body.update(extra)
    else:
        detail = getattr(exc, "detail", str(exc))
        codes = exc.get_codes() if isinstance(exc, exceptions.APIException) else "error"
        body = {"code": codes if isinstance(codes, str) else "error", "message": str(detail)}
    # "type" as OpenAI clients expect it in /v1/ errors; the same everywhere so there is one error shape.
    body["type"] = "server_error" if response.status_code >= 500 else "invalid_request_error"
    response.data = {"error": body}
    return response


class FileValidationError(exceptions.ValidationError):
    """A 400 that also lists the problems of an uploaded file by line."""

    def __init__(self, field: str, problems: list[dict[str, Any]], message: str) -> None:
        super().__init__({field: [message]})
        self.extra = {"code": "invalid_file", "problems": problems}


def api_not_found(request: HttpRequest, rest: str = "") -> JsonResponse:
    """Answer unknown /api/ paths in the API's JSON error shape instead of an HTML page."""
    return JsonResponse(
        {"error": {"code": "not_found", "message": f"no API endpoint at {request.path}; see /api/schema/"}},
        status=404,
    )
