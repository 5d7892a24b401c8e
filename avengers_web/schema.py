"""OpenAPI: the bearer-token authentication, and the errors every operation documents in the API's one shape."""
from __future__ import annotations

import re
from typing import Any

from drf_spectacular import openapi
from drf_spectacular.extensions import OpenApiAuthenticationExtension
from rest_framework import serializers


class BearerTokenScheme(OpenApiAuthenticationExtension):
    target_class = "avengers_web.auth.BearerTokenAuthentication"
    name = "bearerAuth"

    def get_security_definition(self, auto_schema: Any) -> dict[str, str]:
        return {"type": "http", "scheme": "bearer", "description": "Authorization: Bearer <token>"}


class ErrorDetail(serializers.Serializer):
    code = serializers.CharField(help_text="Machine-readable: invalid, not_found, throttled, ...")
    message = serializers.CharField(help_text="What is wrong, for a person.")
    type = serializers.CharField(help_text="invalid_request_error, or server_error (as OpenAI clients expect).")
    fields = serializers.DictField(child=serializers.ListField(child=serializers.CharField()), required=False,
                                   help_text="For invalid input: field -> its problems.")
    problems = serializers.ListField(child=serializers.DictField(), required=False,
                                     help_text="For an invalid file: its problems with their lines.")


class Error(serializers.Serializer):
    error = ErrorDetail()


ERRORS = {
    "400": "Invalid input: the message says which field and why.",
    "401": "No valid API token.",
    "403": "The token's user (or a read-only token) may not do this.",
    "404": "No such object (or no such page of a list).",
    "413": "The request body is too large.",
    "415": "The request body's content type is not accepted.",
    "429": "This token's requests per minute are used up; see Retry-After.",
}


class AutoSchema(openapi.AutoSchema):
    """drf-spectacular's schema, with the errors each operation can answer documented in the API's error shape."""

    def get_description(self) -> str:
        # A view's docstring is wrapped at the code's line length; as a description it is prose, so a single line
        # break joins the lines (a blank line still starts a paragraph).
        return re.sub(r"(?<!\n)\n(?!\n)", " ", super().get_description())

    def _get_response_bodies(self, direction: Any = "response") -> dict[str, Any]:
        responses: dict[str, Any] = super()._get_response_bodies(direction)
        codes = ["400", "401", "403", "404"]
        if self.method in ("POST", "PUT", "PATCH") and self.get_request_serializer() is not None:
            codes += ["413", "415"]
        if getattr(self.view, "throttle_classes", None):
            codes.append("429")
        for code in codes:
            responses.setdefault(code, {"description": ERRORS[code]})
        for code, response in responses.items():
            if code >= "400" and not response.get("content"):
                shaped = self._get_response_for_code(Error, code, direction=direction)
                response["content"] = shaped["content"]
        return dict(sorted(responses.items()))
