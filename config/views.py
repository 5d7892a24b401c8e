"""The platform's front page: counts, recent activity, imports and runs in progress of both apps."""
from __future__ import annotations

from django.http import HttpRequest, HttpResponse
from django.shortcuts import render

from avengers_web.models import Activity
from evaluation import selectors as evaluation_selectors


def overview(request: HttpRequest) -> HttpResponse:
    return render(request, "avengers_web/overview.html", {
        "counts": evaluation_selectors.overview_counts(),
        "activity": Activity.objects.select_related("actor")[:20],
        "imports": evaluation_selectors.import_recent(5),
        "in_progress": evaluation_selectors.runs_in_progress(),
    })
