"""Routes of the evaluation app: its dashboard pages (mounted at the root) and its API (under /api/v1/).

Each route is declared on its view (``@pages(...)``, ``@endpoints(...)``, see avengers_web.routes); this module
only says which modules serve pages and which serve the API.
"""
from __future__ import annotations

from evaluation import api as evaluation_api
from evaluation import views
from evaluation.runs import api as runs_api
from evaluation.runs import views as runs_views

pages = [*views.pages.urlpatterns, *runs_views.pages.urlpatterns]

api = [*evaluation_api.endpoints.urlpatterns, *runs_api.endpoints.urlpatterns]
