"""One ServiceError: the API answers it as a 400 naming the field, forms show it on that field, commands stop."""
from __future__ import annotations

import pytest
from django import forms
from django.core.exceptions import ValidationError
from django.core.management.base import CommandError

from avengers_web.api import exception_handler
from avengers_web.service_errors import ServiceError, add_service_error, command_errors


class RunForm(forms.Form):
    samples = forms.IntegerField(required=False)
    temperature = forms.FloatField(required=False)


def bound_form() -> RunForm:
    form = RunForm({})
    assert form.is_valid()
    return form


def test_the_api_answers_a_service_error_as_a_400_naming_the_field() -> None:
    response = exception_handler(ServiceError("samples", "must be between 1 and 100"), {})
    assert response is not None and response.status_code == 400
    assert response.data == {"error": {"code": "invalid", "message": "samples: must be between 1 and 100",
                                       "fields": {"samples": ["must be between 1 and 100"]},
                                       "type": "invalid_request_error"}}


def test_the_api_answers_a_models_full_clean_as_a_400_with_its_fields() -> None:
    response = exception_handler(ValidationError({"name": ["taken"]}), {})
    assert response is not None and response.status_code == 400
    assert response.data["error"]["fields"] == {"name": ["taken"]}
    plain = exception_handler(ValidationError("no"), {})
    assert plain is not None and plain.data["error"]["fields"] == {"non_field_errors": ["no"]}


def test_a_form_shows_the_error_on_the_field_it_names() -> None:
    form = bound_form()
    add_service_error(form, ServiceError("samples", "too many"))
    assert form.errors == {"samples": ["too many"]}


def test_a_form_shows_an_error_of_a_spread_input_on_the_part_it_names_first() -> None:
    form = bound_form()
    add_service_error(form, ServiceError("params", "temperature: must be a number"))
    assert form.errors == {"temperature": ["temperature: must be a number"]}


def test_a_form_shows_an_error_of_a_field_it_lacks_above_the_form() -> None:
    form = bound_form()
    add_service_error(form, ServiceError("batch_size", "must be at least 1"))
    assert form.non_field_errors() == ["must be at least 1"]


def test_a_form_shows_a_models_full_clean_on_its_fields() -> None:
    form = bound_form()
    add_service_error(form, ValidationError({"samples": ["bad"], "name": ["taken"]}))
    assert form.errors["samples"] == ["bad"] and form.non_field_errors() == ["taken"]


def test_a_command_stops_with_the_field_and_message() -> None:
    @command_errors
    def handle() -> None:
        raise ServiceError("k", "must be at least 1")

    with pytest.raises(CommandError, match="^k: must be at least 1$"):
        handle()
