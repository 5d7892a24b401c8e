"""Routes of the routing service: its pages (at the root), its API (under /api/v1/), the OpenAI-compatible API (/v1/)."""
from __future__ import annotations

from django.urls import path

from routing.serving import views
from routing.serving.api import AnswerApi, RouteApi
from routing.serving.openai import ChatCompletionsApi, ModelsApi

pages = [
    path("playground/", views.playground, name="playground"),
    path("traffic/", views.traffic, name="traffic"),
]

api = [
    path("route", RouteApi.as_view(), name="api-route"),
    path("answer", AnswerApi.as_view(), name="api-answer"),
]

# So that any OpenAI client can talk to the router.
openai = [
    path("chat/completions", ChatCompletionsApi.as_view(), name="openai-chat-completions"),
    path("models", ModelsApi.as_view(), name="openai-models"),
]
