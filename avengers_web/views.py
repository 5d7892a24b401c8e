"""Dashboard pages of the platform base: API tokens."""
from __future__ import annotations

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_POST

from avengers_web.errors import found_or_404
from avengers_web.models import ApiToken
from avengers_web.parsing import parse_id
from avengers_web.roles import role_of
from avengers_web.services import MAX_TOKEN_DAYS, api_token_create, api_token_revoke


@login_required
def token_list(request: HttpRequest) -> HttpResponse:
    new_key = None
    error = None
    if request.method == "POST":
        name = request.POST.get("name", "").strip()[:100]
        days_text = request.POST.get("expires_in_days", "").strip()
        days = parse_id(days_text) if days_text else None
        if days_text and days is None:
            error = "Expires after: give a whole number of days, or leave it empty for a token that does not expire."
        else:
            try:
                _, new_key = api_token_create(user=request.user, name=name, read_only=bool(request.POST.get("read_only")),
                                              expires_in_days=days)
            except ValueError as exc:
                error = f"Expires after: {exc}."
    tokens = ApiToken.objects.filter(user=request.user)
    return render(request, "avengers_web/tokens.html", {
        "tokens": tokens, "new_key": new_key, "error": error, "role": role_of(request.user),
        "max_days": MAX_TOKEN_DAYS}, status=400 if error else 200)


@login_required
@require_POST
def token_revoke(request: HttpRequest, pk: int) -> HttpResponse:
    token = found_or_404(ApiToken.objects.filter(user=request.user, pk=pk).first(), "No such token")
    api_token_revoke(token=token)
    messages.success(request, f"Revoked token {token.prefix}…")
    return redirect("tokens")
