"""Refuse input that could only fail deeper down, and answer every error of the API in its JSON shape.

- A NUL character in the path, a query parameter or a posted form field is refused with a 400 here, once:
  PostgreSQL refuses NUL in text, so it would surface as a 500 from whichever query reads the parameter.
  (JSON bodies are checked by the API's parser, ``avengers_web.parsers.JSONParser``.)
- A posted form larger than DATA_UPLOAD_MAX_MEMORY_SIZE is a 413, a malformed one a 400.
- On /api/ and /v1/, an unhandled exception is logged as Django logs it and answered as a JSON 500, and any
  other error that is not JSON (Django's HTML pages, DEBUG's technical pages) is answered in the JSON shape.
"""
from __future__ import annotations

from collections.abc import Callable

from django.core import signals
from django.core.exceptions import BadRequest, PermissionDenied, RequestDataTooBig, SuspiciousOperation
from django.http import Http404, HttpRequest, HttpResponse
from django.http.multipartparser import MultiPartParserError
from django.utils.log import log_response

from avengers_web.api import error_response, is_api_path, too_large_message
from avengers_web.errors import error_page
from avengers_web.parsing import has_nul

FORM_TYPES = ("application/x-www-form-urlencoded", "multipart/form-data")
# The API's error codes for error responses that come without one.
CODES = {400: "bad_request", 401: "not_authenticated", 403: "permission_denied", 404: "not_found",
         405: "method_not_allowed", 413: "request_too_large", 415: "unsupported_media_type", 429: "throttled"}
KEPT_HEADERS = ("Allow", "Retry-After", "WWW-Authenticate")


class InputGuardMiddleware:
    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        api = is_api_path(request.path_info)
        response = self._refusal(request, api)
        if response is None:
            response = self.get_response(request)
        if api and response.status_code >= 400 and not response.get("Content-Type", "").startswith("application/json"):
            response = _as_json(response)
        return response

    def process_exception(self, request: HttpRequest, exception: Exception) -> HttpResponse | None:
        """Answer an API view's unhandled exception as a JSON 500, logged and signalled as Django does."""
        if not is_api_path(request.path_info) or isinstance(
                exception, (Http404, PermissionDenied, BadRequest, SuspiciousOperation)):
            return None  # Django answers these with a 4xx, which __call__ puts in the JSON shape
        response = error_response(500, "server_error", "Internal server error; the server's log has the details.")
        signals.got_request_exception.send(sender=None, request=request)
        log_response("%s: %s", response.reason_phrase, request.path, response=response, request=request,
                     exception=exception)
        return response

    def _refusal(self, request: HttpRequest, api: bool) -> HttpResponse | None:
        if has_nul(request.path_info):
            return _refuse(request, api, 400, "The path holds a NUL character, which is not allowed.")
        try:
            for key, values in request.GET.lists():
                if has_nul(key, *values):
                    return _refuse(request, api, 400,
                                   f"The query parameter {key!r} holds a NUL character, which is not allowed.")
            if request.method != "POST" or request.content_type not in FORM_TYPES:
                return None
            for key, values in request.POST.lists():
                if has_nul(key, *values):
                    return _refuse(request, api, 400,
                                   f"The form field {key!r} holds a NUL character, which is not allowed.")
            for key, files in request.FILES.lists():
                if has_nul(key, *(f.name or "" for f in files)):
                    return _refuse(request, api, 400,
                                   f"The file field {key!r} or its file name holds a NUL character.")
        except RequestDataTooBig:
            return _refuse(request, api, 413, too_large_message())
        except (SuspiciousOperation, BadRequest, MultiPartParserError):
            return _refuse(request, api, 400, "The request's parameters or form data are malformed or too many.")
        return None


def _refuse(request: HttpRequest, api: bool, status: int, message: str) -> HttpResponse:
    return error_response(status, CODES[status], message) if api else error_page(request, status, message)


def _as_json(response: HttpResponse) -> HttpResponse:
    """The same error in the API's JSON shape (an HTML error page is of no use to an API client)."""
    status = response.status_code
    replaced = error_response(status, CODES.get(status, "server_error" if status >= 500 else "error"),
                              f"{response.reason_phrase}.")
    for header in KEPT_HEADERS:
        if header in response:
            replaced[header] = response[header]
    if getattr(response, "_has_been_logged", False):
        replaced._has_been_logged = True  # type: ignore[attr-defined]
    return replaced
