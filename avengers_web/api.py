"""Shared REST API pieces: one paginated response, one way to answer with a stored object (and a detail view of it),
fields that take a row by name or id, and JSON errors that say what is wrong and where, in one shape:
{"error": {"code", "message", "type", ...}}."""
from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any, ClassVar, Generic, TypeVar

from django.conf import settings
from django.contrib.auth.decorators import login_not_required
from django.core.exceptions import BadRequest, PermissionDenied, RequestDataTooBig, SuspiciousOperation
from django.core.exceptions import ValidationError as DjangoValidationError
from django.http import Http404, HttpRequest, JsonResponse
from rest_framework import exceptions, serializers
from rest_framework.pagination import PageNumberPagination
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView
from rest_framework.views import exception_handler as drf_exception_handler
from rest_framework_dataclasses.serializers import DataclassSerializer

from avengers_web.errors import found_or_404
from avengers_web.service_errors import ServiceError

# Paths whose errors are answered in the API's JSON shape, whatever raised them.
API_PREFIXES = ("/api/", "/v1/")


def is_api_path(path: str) -> bool:
    return path.startswith(API_PREFIXES) or path in ("/api", "/v1")


def error_type(status: int) -> str:
    # "type" as OpenAI clients expect it in /v1/ errors; the same everywhere so there is one error shape.
    return "server_error" if status >= 500 else "invalid_request_error"


def error_body(status: int, code: str, message: str) -> dict[str, Any]:
    return {"error": {"code": code, "message": message, "type": error_type(status)}}


def error_response(status: int, code: str, message: str) -> JsonResponse:
    """An error in the API's JSON shape, for code outside DRF's views (middleware, unknown paths)."""
    return JsonResponse(error_body(status, code, message), status=status)


def too_large_message() -> str:
    return f"The request body is larger than {settings.DATA_UPLOAD_MAX_MEMORY_SIZE} bytes (uploaded files aside)."


class PayloadTooLarge(exceptions.APIException):
    status_code = 413
    default_detail = "The request body is too large."
    default_code = "request_too_large"


class Pagination(PageNumberPagination):
    page_size_query_param = "page_size"
    max_page_size = 500


Row = TypeVar("Row")


@dataclasses.dataclass(frozen=True)
class Stored(Generic[Row]):
    """One kind of stored object as the API answers with it: found by its selector (a 404 when that finds nothing)
    and shown by its output serializer."""

    find: Callable[[int], Row | None]  # a selector: pk -> the row, or None
    output: type[serializers.BaseSerializer]

    def get(self, pk: int) -> Row:
        """The row, or the API's 404."""
        return found_or_404(self.find(pk))

    def response(self, pk: int, code: int = 200) -> Response:
        """Answer with the row as the database holds it now (after a service changed it: fresh counts and status)."""
        return Response(self.output(self.get(pk)).data, status=code)


class StoredDetailApi(APIView):
    # GET answers with one stored object; a subclass says which kind (``stored``) and names the operation; the schema
    # reads the output from ``get_serializer_class``.
    stored: ClassVar[Stored[Any]]

    def get_serializer_class(self) -> type[serializers.BaseSerializer]:
        return self.stored.output

    def get(self, request: Request, pk: int) -> Response:
        return self.stored.response(pk)


# An API answer that is a service's or selector's dataclass: the dataclass's fields are the serializer's (a subclass
# names it in ``Meta.dataclass``), and each is required, so the schema says it is always there, even one with a default.
# The schema names it as any serializer (after the class, or ``Meta.ref_name``), not after the dataclass.
class DataclassOutput(DataclassSerializer):
    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        meta = cls.__dict__.get("Meta")  # a subclass that inherits its Meta leaves its parent's alone
        if meta is None:
            return
        if getattr(meta, "ref_name", None) is None:
            meta.ref_name = cls.__name__
        declared = getattr(cls, "_declared_fields", {})
        extra = getattr(meta, "extra_kwargs", {})
        meta.extra_kwargs = {field.name: {"required": True, **extra.get(field.name, {})}
                             for field in dataclasses.fields(meta.dataclass) if field.name not in declared}


def paginate(request: Request, view: APIView, items: Any, serializer_class: type[serializers.BaseSerializer],
             context: Callable[[Sequence[Any]], dict[str, Any]] | None = None) -> Response:
    """Answer one page of ``items``, paginated as the view's ``pagination_class`` (which the schema documents).

    ``context`` gives the serializer's context from the page's rows (data looked up for them alone).
    """
    paginator = (getattr(view, "pagination_class", None) or Pagination)()
    page = paginator.paginate_queryset(items, request, view=view) or []
    serializer = serializer_class(page, many=True, context=context(page) if context else {})
    return paginator.get_paginated_response(serializer.data)


# Looks the given names or ids up: the rows found, in order without repeats, and the values that match none.
Lookup = Callable[[list[str]], tuple[list[Any], list[str]]]


def _resolve(values: list[str], lookup: Lookup, unknown: Callable[[list[str]], str]) -> list[Any]:
    found, missing = lookup(values)
    if missing:
        raise serializers.ValidationError(unknown(missing))
    return found


class NameOrIdField(serializers.CharField):
    """A row given by its name or its id; validated to the row, or refused with ``unknown([value])``."""

    def __init__(self, *, lookup: Lookup, unknown: Callable[[list[str]], str], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.lookup, self.unknown = lookup, unknown

    def to_internal_value(self, data: Any) -> Any:
        return _resolve([super().to_internal_value(data)], self.lookup, self.unknown)[0]


class NamesOrIdsField(serializers.ListField):
    """A list of rows given by name or id; validated to the rows, or refused with ``unknown(values found none)``."""

    def __init__(self, *, lookup: Lookup, unknown: Callable[[list[str]], str], **kwargs: Any) -> None:
        super().__init__(child=serializers.CharField(), **kwargs)
        self.lookup, self.unknown = lookup, unknown

    def to_internal_value(self, data: Any) -> Any:
        return _resolve(super().to_internal_value(data), self.lookup, self.unknown)


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
    elif isinstance(exc, RequestDataTooBig):
        exc = PayloadTooLarge(too_large_message())
    elif isinstance(exc, (BadRequest, SuspiciousOperation)):
        # Django's own message may name server paths: say only that the request was refused.
        exc = exceptions.ParseError("The request is malformed or refused as unsafe.")
    elif isinstance(exc, PermissionDenied):
        exc = exceptions.PermissionDenied(str(exc) or None)
    elif isinstance(exc, ServiceError):
        exc = exceptions.ValidationError({exc.field: [exc.message]})
    elif isinstance(exc, DjangoValidationError):  # a model's full_clean, called by a service
        exc = exceptions.ValidationError(exc.message_dict if hasattr(exc, "error_dict")
                                         else {"non_field_errors": exc.messages})
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
    body["type"] = error_type(response.status_code)
    response.data = {"error": body}
    return response


class FileValidationError(exceptions.ValidationError):
    """A 400 that also lists the problems of an uploaded file by line."""

    def __init__(self, field: str, problems: list[dict[str, Any]], message: str) -> None:
        super().__init__({field: [message]})
        self.extra = {"code": "invalid_file", "problems": problems}


@login_not_required  # an unknown API path answers JSON 404, never a log-in redirect
def api_not_found(request: HttpRequest, rest: str = "") -> JsonResponse:
    """Answer unknown /api/ paths in the API's JSON error shape instead of an HTML page."""
    return error_response(404, "not_found", f"no API endpoint at {request.path}; see /api/schema/")
