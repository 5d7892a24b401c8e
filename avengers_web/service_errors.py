"""The one error a service raises when its input is refused, and how forms and commands show it.

The API answers it as a 400 naming the field (``avengers_web.api.exception_handler``); a form shows it on that
field (``add_service_error``); a dashboard button shows it as a message (``report_action``, and ``object_button``
for a button on one object's page); a management command stops with it (``command_errors``).
"""
from __future__ import annotations

import functools
from collections.abc import Callable
from typing import ParamSpec, TypeVar

from django import forms
from django.contrib import messages
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect
from django.core.exceptions import ValidationError
from django.core.management.base import CommandError

from avengers_web import roles

P = ParamSpec("P")
R = TypeVar("R")
T = TypeVar("T")


class ServiceError(ValueError):
    """A service cannot do what it was asked; ``field`` names the input at fault."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


def _form_field(form: forms.BaseForm, exc: ServiceError) -> str | None:
    if exc.field in form.fields:
        return exc.field
    # An input the form spreads over several fields names the part first: "params" with "temperature: ...".
    part = exc.message.split(":", 1)[0].strip()
    return part if part in form.fields else None


def add_service_error(form: forms.BaseForm, exc: ServiceError | ValidationError) -> None:
    """Show a service's refusal (or a model's ``full_clean``) on the form field it names, else above the form."""
    if isinstance(exc, ServiceError):
        form.add_error(_form_field(form, exc), exc.message)
    elif hasattr(exc, "error_dict"):
        for field, errors in exc.message_dict.items():
            form.add_error(field if field in form.fields else None, errors)
    else:
        form.add_error(None, exc.messages)


def report_action(request: HttpRequest, action: Callable[[], R], *, refused: str,
                  done: Callable[[R], str]) -> R | None:
    """Run a dashboard button's service call and say how it went: "refused: why" as an error, else ``done(result)``."""
    try:
        result = action()
    except ServiceError as exc:
        messages.error(request, f"{refused}: {exc.message}")
        return None
    messages.success(request, done(result))
    return result


def object_button(request: HttpRequest, target: T, permission: str, action: Callable[[T], R], *, refused: str,
                  done: Callable[[R], str], back: str) -> HttpResponse:
    """A button on one object's page: the user must hold ``permission`` on ``target`` (a 403 that says why);
    ``action(target)`` runs as ``report_action`` runs it, then the browser goes back to the page named ``back``."""
    roles.require(request.user, permission, target)
    report_action(request, lambda: action(target), refused=refused, done=done)
    return redirect(back, pk=target.pk)  # type: ignore[attr-defined]


def command_errors(handle: Callable[P, R]) -> Callable[P, R]:
    """Stop a management command with "field: message" when a service refuses its input."""

    @functools.wraps(handle)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return handle(*args, **kwargs)
        except ServiceError as exc:
            raise CommandError(str(exc)) from None

    return wrapper
