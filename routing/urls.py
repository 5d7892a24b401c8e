"""Routes of the routing app: its pages (at the root), its API (under /api/v1/) and the OpenAI-compatible API (/v1/).

Each route is declared on its view (``@pages(...)``, ``@endpoints(...)``, see avengers_web.routes).
"""
from __future__ import annotations

from routing import api as routing_api
from routing import views
from routing.serving import urls as serving

pages = [*views.pages.urlpatterns, *serving.pages]

api = [*serving.api, *routing_api.endpoints.urlpatterns]

# OpenAI-compatible routes: the routing service's alone.
openai = serving.openai
