"""Bearer-token authentication for the REST API (Authorization: Bearer <token>)."""
from __future__ import annotations

from typing import Any

from rest_framework import authentication, exceptions
from rest_framework.request import Request

from avengers_web.services import api_token_authenticate


class BearerTokenAuthentication(authentication.BaseAuthentication):
    keyword = "Bearer"

    def authenticate(self, request: Request) -> tuple[Any, Any] | None:
        header = authentication.get_authorization_header(request).decode("latin-1").strip()
        if not header:
            return None
        scheme, _, key = header.partition(" ")
        if scheme.lower() != self.keyword.lower():
            raise exceptions.AuthenticationFailed("Authorization must be 'Bearer <token>'.")
        key = key.strip()
        if not key or " " in key:
            raise exceptions.AuthenticationFailed("Authorization must be 'Bearer <token>' with one token.")
        token = api_token_authenticate(key)
        if token is None:
            raise exceptions.AuthenticationFailed("Invalid or revoked API token.")
        return token.user, token

    def authenticate_header(self, request: Request) -> str:
        return 'Bearer realm="api"'
