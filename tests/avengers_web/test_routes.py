"""Routes declared on their views (avengers_web.routes): the view served is the decorated one, names are unique."""
from __future__ import annotations

import functools
import sys
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from django.http import HttpRequest, HttpResponse
from django.urls import URLPattern, URLResolver, get_resolver
from rest_framework.views import APIView

from avengers_web import roles
from avengers_web.routes import Routes

routes = Routes()


def refuse_everyone(view: Callable[..., HttpResponse]) -> Callable[..., HttpResponse]:
    @functools.wraps(view)
    def wrapper(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        return HttpResponse("refused", status=403)

    return wrapper


# The route is declared *below* the permission check: the served view must still be the checked one.
@refuse_everyone
@routes("secret/", name="test-secret")
def secret(request: HttpRequest) -> HttpResponse:
    return HttpResponse("the secret")


@routes("things", name="test-things")
class ThingsApi(APIView):
    pass


def test_the_view_served_carries_every_decorator_whatever_their_order(rf) -> None:  # type: ignore[no-untyped-def]
    pattern = routes.urlpatterns[0]
    assert pattern.callback is secret
    assert pattern.callback(rf.get("/secret/")).status_code == 403
    assert str(pattern.pattern) == "secret/" and pattern.name == "test-secret"


def test_an_api_view_class_is_served_through_as_view() -> None:
    pattern = routes.urlpatterns[1]
    assert pattern.callback.view_class is ThingsApi  # type: ignore[attr-defined]
    assert pattern.name == "test-things"


def test_an_api_view_may_not_take_a_pages_role_or_method_rule() -> None:
    with pytest.raises(TypeError, match="declares its permissions itself"):
        Routes()("more-things", name="more-things", role=roles.BUILD_SNAPSHOT)(ThingsApi)
    with pytest.raises(TypeError, match="declares its permissions itself"):
        Routes()("more-things", name="more-things", post_only=True)(ThingsApi)


def test_a_role_and_post_only_wrap_the_view_log_in_first(rf) -> None:  # type: ignore[no-untyped-def]
    from django.contrib.auth.models import AnonymousUser

    guarded = Routes()("guarded/", name="guarded", role=roles.BUILD_SNAPSHOT, post_only=True)(
        lambda request: HttpResponse("done"))
    for request in (rf.post("/guarded/"), rf.get("/guarded/")):
        request.user = AnonymousUser()
        response = guarded(request)
        assert response.status_code == 302 and "/login/" in response["Location"]  # not a 405 for the GET


def test_a_url_name_declared_twice_is_refused() -> None:
    twice = Routes()
    twice("a/", name="same")(secret)
    with pytest.raises(ValueError, match="'same' is declared twice"):
        twice("b/", name="same")(secret)


def _patterns(patterns: list[Any]) -> Iterator[URLPattern]:
    for pattern in patterns:
        if isinstance(pattern, URLResolver):
            yield from _patterns(pattern.url_patterns)
        else:
            yield pattern


def test_every_app_route_serves_its_modules_final_view() -> None:
    served = 0
    for pattern in _patterns(get_resolver().url_patterns):
        callback = pattern.callback
        target = getattr(callback, "view_class", callback)
        if not target.__module__.startswith(("evaluation.", "routing.")) or target.__module__.endswith(".admin"):
            continue
        assert getattr(sys.modules[target.__module__], target.__qualname__) is target, pattern
        served += 1
    assert served >= 50  # the two apps serve 54 pages and endpoints today
