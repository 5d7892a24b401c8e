"""Routes declared where their views are: a new page or API endpoint is one decorated definition.

Each views or API module makes one ``Routes`` and puts it above each view it serves::

    pages = Routes()

    @pages("datasets/<int:pk>/templates/", name="dataset-templates", role=roles.EDIT_DATASET)
    def dataset_templates(request, pk): ...

and the app's ``urls.py`` mounts ``pages.urlpatterns``. A page's ``role`` sends visitors to log in and refuses
users without that permission (``roles.role_required``); ``post_only`` answers 405 to anything but a POST (a
button's view). The pattern is built from the module's attribute when the URL configuration is read, not from the
object the decorator saw, so the view served is the one with all of its decorators whatever their order (a
permission check can never be left out by putting ``@pages`` below it). An API view class is served through
``as_view()`` and declares its permissions itself (``write_permissions``), so ``role`` and ``post_only`` are
refused on one.
"""
from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from django.urls import URLPattern, path
from django.views.decorators.http import require_POST

from avengers_web import roles

View = TypeVar("View", bound=Callable[..., Any])


@dataclass(frozen=True)
class _Declared:
    route: str
    name: str
    module: str
    attribute: str


class Routes:
    """The routes of one module, in the order its views are defined (the order URLs are matched in)."""

    def __init__(self) -> None:
        self._declared: list[_Declared] = []

    def __call__(self, route: str, *, name: str, role: str | None = None,
                 post_only: bool = False) -> Callable[[View], View]:
        """Serve the decorated view (a function or an APIView class) at ``route`` under the URL ``name``."""

        def declare(view: View) -> View:
            if any(declared.name == name for declared in self._declared):
                raise ValueError(f"URL name {name!r} is declared twice")
            if isinstance(view, type) and (role or post_only):
                raise TypeError(f"{name}: an API view declares its permissions itself (write_permissions)")
            self._declared.append(_Declared(route, name, view.__module__, view.__qualname__))
            if post_only:
                view = require_POST(view)
            if role is not None:
                view = roles.role_required(role)(view)
            return view

        return declare

    @property
    def urlpatterns(self) -> list[URLPattern]:
        patterns = []
        for declared in self._declared:
            view = getattr(sys.modules[declared.module], declared.attribute)
            if isinstance(view, type):
                view = view.as_view()
            patterns.append(path(declared.route, view, name=declared.name))
        return patterns
