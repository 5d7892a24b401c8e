"""Routes of the routing service: its pages (at the root), its API (under /api/v1/), the OpenAI-compatible API (/v1/).

Each route is declared on its view (see avengers_web.routes).
"""
from __future__ import annotations

from routing.serving import api as serving_api
from routing.serving import openai as openai_api
from routing.serving import views

pages = views.pages.urlpatterns

api = serving_api.endpoints.urlpatterns

# So that any OpenAI client can talk to the router.
openai = openai_api.endpoints.urlpatterns
