"""Roles: viewer, editor and admin, as Django groups that hold model permissions.

- **viewer** reads every page and API list, sends queries to the router (route, answer, chat, playground)
  and manages its own API tokens;
- **editor** also uploads and edits datasets, starts, cancels and resumes evaluations, and builds snapshots
  (new, derived, embedding jobs);
- **admin** also registers and edits model endpoints, activates snapshots, edits or controls objects other
  users own, and manages users (in the admin site, which admins may enter).

Objects carry their owner (``created_by``): changing another user's object, or one nobody owns (made by
the system or by a deleted user), needs ``avengers_web.manage_others``, which only admins hold. Superusers hold every permission. A logged-in user in
no group reads like a viewer. The groups are written after every ``migrate`` (``sync_roles``), so a new
permission reaches its role with the next migration; ``manage.py set_role USER ROLE`` assigns one.
"""
from __future__ import annotations

from collections.abc import Callable
from functools import wraps
from typing import Any

from django.contrib.auth.decorators import login_required
from django.contrib.auth.models import AbstractBaseUser, AnonymousUser, Group, Permission
from django.core.exceptions import PermissionDenied
from django.db import transaction
from django.http import HttpRequest, HttpResponse

# The permissions the pages and the API check, one per kind of write.
UPLOAD_DATASET = "evaluation.add_dataset"
EDIT_DATASET = "evaluation.change_dataset"
START_RUN = "evaluation.add_evaluationrun"
CONTROL_RUN = "evaluation.change_evaluationrun"
BUILD_SNAPSHOT = "routing.add_routersnapshot"
EMBED = "routing.add_embeddingjob"
REGISTER_MODEL = "evaluation.add_languagemodel"
EDIT_MODEL = "evaluation.change_languagemodel"
DELETE_MODEL = "evaluation.delete_languagemodel"
ACTIVATE_SNAPSHOT = "routing.change_routersnapshot"
MANAGE_OTHERS = "avengers_web.manage_others"

_EDITOR = (UPLOAD_DATASET, EDIT_DATASET, START_RUN, CONTROL_RUN, BUILD_SNAPSHOT, EMBED)
_ADMIN = _EDITOR + (
    REGISTER_MODEL, EDIT_MODEL, DELETE_MODEL, ACTIVATE_SNAPSHOT, MANAGE_OTHERS,
    "auth.view_user", "auth.add_user", "auth.change_user", "auth.delete_user", "auth.view_group",
    "avengers_web.view_apitoken", "avengers_web.change_apitoken",
)
ROLE_PERMISSIONS: dict[str, tuple[str, ...]] = {"viewer": (), "editor": _EDITOR, "admin": _ADMIN}
ROLES = tuple(ROLE_PERMISSIONS)

# What each permission lets a user do, for the messages of a refusal.
_ACTIONS = {
    UPLOAD_DATASET: "upload datasets", EDIT_DATASET: "edit datasets", START_RUN: "start evaluations",
    CONTROL_RUN: "cancel or resume evaluations", BUILD_SNAPSHOT: "build snapshots", EMBED: "start embedding jobs",
    REGISTER_MODEL: "register models", EDIT_MODEL: "edit models", DELETE_MODEL: "delete models",
    ACTIVATE_SNAPSHOT: "activate snapshots", MANAGE_OTHERS: "change what other users own",
}
_NEEDS = {perm: "admin" if perm not in _EDITOR else "editor" for perm in _ACTIONS}

User = AbstractBaseUser | AnonymousUser


def _permission(name: str) -> Permission:
    app_label, codename = name.split(".", 1)
    return Permission.objects.get(content_type__app_label=app_label, codename=codename)


@transaction.atomic
def sync_roles() -> None:
    """Create the three groups and give each exactly its permissions (idempotent)."""
    for role, names in ROLE_PERMISSIONS.items():
        group, _ = Group.objects.get_or_create(name=role)
        group.permissions.set([_permission(name) for name in names])


@transaction.atomic
def set_role(user: AbstractBaseUser, role: str) -> None:
    """Make ``user`` a member of ``role`` only; admins may enter the admin site (``is_staff``)."""
    if role not in ROLE_PERMISSIONS:
        raise ValueError(f"unknown role {role!r}; choose one of {', '.join(ROLES)}")
    group, _ = Group.objects.get_or_create(name=role)
    user.groups.set([group])  # type: ignore[attr-defined]
    user.is_staff = role == "admin"  # type: ignore[attr-defined]
    user.save(update_fields=["is_staff"])
    for cache in ("_perm_cache", "_user_perm_cache", "_group_perm_cache"):
        user.__dict__.pop(cache, None)


def role_of(user: User) -> str | None:
    """The user's highest role: admin, editor or viewer for any logged-in user; None for a visitor."""
    if not user.is_authenticated:
        return None
    if user.is_superuser:  # type: ignore[union-attr]
        return "admin"
    names = set(user.groups.values_list("name", flat=True))  # type: ignore[union-attr]
    for role in ("admin", "editor"):
        if role in names:
            return role
    return "viewer"


def refusal(user: User, permission: str) -> str:
    """A message saying which role an action needs and which the user has."""
    action = _ACTIONS.get(permission, "do this")
    return f"Only {_NEEDS.get(permission, 'admin')}s may {action}; your role is {role_of(user) or 'visitor'}."


def may(user: User, permission: str, obj: Any = None) -> bool:
    """Whether ``user`` holds ``permission``, and, for an owned object, owns it or may manage others'."""
    if not user.is_authenticated or not user.has_perm(permission):
        return False
    if obj is None or not hasattr(obj, "created_by_id"):
        return True
    return obj.created_by_id == user.pk or user.has_perm(MANAGE_OTHERS)


def require(user: User, permission: str, obj: Any = None) -> None:
    """Raise PermissionDenied with a message a person can act on unless ``may(user, permission, obj)``."""
    if may(user, permission, obj):
        return
    if user.is_authenticated and user.has_perm(permission):
        raise PermissionDenied(f"This belongs to another user; {refusal(user, MANAGE_OTHERS)}")
    raise PermissionDenied(refusal(user, permission))


def role_required(permission: str) -> Callable[[Callable[..., HttpResponse]], Callable[..., HttpResponse]]:
    """Page decorator: visitors go to log-in; a user without ``permission`` gets a 403 that says why."""
    def decorate(view: Callable[..., HttpResponse]) -> Callable[..., HttpResponse]:
        @login_required
        @wraps(view)
        def wrapper(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
            require(request.user, permission)
            return view(request, *args, **kwargs)
        return wrapper
    return decorate
