"""The dashboard's error pages (urls.py's handler400/403/404/500): they need neither DEBUG nor Django's defaults;
and ``found_or_404``, the one way a view or an API view turns a lookup that found nothing into a 404.

Errors on /api/ and /v1/ become the API's JSON shape in ``avengers_web.middleware``.
"""
from __future__ import annotations

from typing import TypeVar

from django.http import Http404, HttpRequest, HttpResponse, HttpResponseServerError
from django.shortcuts import render
from django.template.loader import render_to_string

T = TypeVar("T")

TITLES = {400: "Bad request", 403: "Not allowed", 404: "Not found", 413: "Request too large"}


def found_or_404(found: T | None, message: str | None = None) -> T:
    """What a selector found, or a 404: with ``message`` on a page; the API's "Not found." without one."""
    if found is None:
        raise Http404(message) if message is not None else Http404()
    return found


def error_page(request: HttpRequest, status: int, message: str) -> HttpResponse:
    return render(request, "error.html", {"title": TITLES[status], "message": message}, status=status)


def _message(exception: Exception, default: str) -> str:
    """The message the code gave the exception (``Http404("No such snapshot")``), if it gave one."""
    message = exception.args[0] if exception.args else None
    return message if isinstance(message, str) and message else default


def bad_request(request: HttpRequest, exception: Exception) -> HttpResponse:
    # Django's own messages for these (SuspiciousOperation) may name server paths: the page says only "refused".
    return error_page(request, 400, "The request is malformed or was refused as unsafe.")


def permission_denied(request: HttpRequest, exception: Exception) -> HttpResponse:
    return error_page(request, 403, _message(exception, "You do not have permission to do this."))


def page_not_found(request: HttpRequest, exception: Exception) -> HttpResponse:
    return error_page(request, 404, _message(exception, "There is nothing at this address."))


def server_error(request: HttpRequest) -> HttpResponse:
    # No request context: its processors read the session and the user, which may be what failed.
    return HttpResponseServerError(render_to_string("500.html"))
