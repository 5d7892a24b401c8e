"""The API's one permission rule, built on Django's permissions (see avengers_web.roles).

Every API view reads with a log-in (a session or a token). A write needs the permission that the view names
for its method in ``write_permissions`` (``None``: any role may, as for routed queries); a method the view
implements but does not name is refused, so a new write cannot be open by accident. Read-only tokens only
read. Changing an owned object is checked in the view with ``roles.require(user, permission, obj)``.
"""
from __future__ import annotations

from typing import Any

from rest_framework.permissions import SAFE_METHODS, BasePermission
from rest_framework.request import Request

from avengers_web.models import ApiToken
from avengers_web.roles import refusal

READ_ONLY_TOKEN = "This API token is read-only: it may only read. Create a token without read-only to make changes."


class RolePermission(BasePermission):
    message = "You may not do this."

    def has_permission(self, request: Request, view: Any) -> bool:
        user = request.user
        if user is None or not user.is_authenticated:
            return False
        if request.method in SAFE_METHODS:
            return True
        if isinstance(request.auth, ApiToken) and request.auth.read_only:
            self.message = READ_ONLY_TOKEN
            return False
        method = (request.method or "").upper()
        if not hasattr(view, method.lower()):
            return True  # DRF answers 405
        rules: dict[str, str | None] = getattr(view, "write_permissions", {})
        if method not in rules:
            self.message = f"{method} is not allowed here."
            return False
        needed = rules[method]
        if needed is not None and not user.has_perm(needed):
            self.message = refusal(user, needed)
            return False
        return True
