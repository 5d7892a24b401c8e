"""OpenAI-compatible routes (mounted under /v1/), so that any OpenAI client can talk to the router."""
from __future__ import annotations

from django.urls import path

from routing import api_serving

urlpatterns = [
    path("chat/completions", api_serving.ChatCompletionsApi.as_view(), name="openai-chat-completions"),
    path("models", api_serving.ModelsApi.as_view(), name="openai-models"),
]
