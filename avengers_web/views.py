"""Dashboard pages of the platform: overview and API tokens."""
from __future__ import annotations

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_POST

from avengers_web.models import Activity, ApiToken
from avengers_web.services import api_token_create, api_token_revoke
from evaluation import selectors as evaluation_selectors


def overview(request: HttpRequest) -> HttpResponse:
    return render(request, "avengers_web/overview.html", {
        "counts": evaluation_selectors.overview_counts(),
        "activity": Activity.objects.select_related("actor")[:20],
        "imports": evaluation_selectors.import_recent(5),
    })


@login_required
def token_list(request: HttpRequest) -> HttpResponse:
    new_key = None
    if request.method == "POST":
        name = request.POST.get("name", "").strip()[:100]
        _, new_key = api_token_create(user=request.user, name=name)
    tokens = ApiToken.objects.filter(user=request.user)
    return render(request, "avengers_web/tokens.html", {"tokens": tokens, "new_key": new_key})


@login_required
@require_POST
def token_revoke(request: HttpRequest, pk: int) -> HttpResponse:
    token = ApiToken.objects.filter(user=request.user, pk=pk).first()
    if token is None:
        raise Http404("No such token")
    api_token_revoke(token=token)
    messages.success(request, f"Revoked token {token.prefix}…")
    return redirect("tokens")
