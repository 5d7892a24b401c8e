"""Routed answers never carry what a failing model server answered, nor its key: /api/v1/answer,
/v1/chat/completions (plain and streamed) and the decision log, against real HTTP servers on loopback."""
from __future__ import annotations

import json

import pytest
from rest_framework.test import APIClient

from evaluation.models import LanguageModel
from routing.models import RoutingDecision
from tests.routing.serving.test_api import fresh_service, snapshot  # noqa: F401 (fixtures)
from tests.support.reflecting_server import echo_headers, html_page, reflecting_server

pytestmark = pytest.mark.django_db

KEY = "sk-live-4f9c2e7a1b8d6035"
INTERNAL = "INTERNAL-ONLY admin console of billing-db-7"


def test_failing_model_servers_are_reported_by_status_only(api: APIClient, snapshot: object) -> None:
    with reflecting_server(html_page(INTERNAL, status=500)) as internal, \
            reflecting_server(echo_headers(status=502)) as echo:
        for name, server in (("alpha", internal), ("beta", echo), ("gamma", internal)):
            LanguageModel.objects.filter(name=name).update(base_url=server.base_url, served_model_id="m",
                                                           api_key=KEY)
        answer = api.post("/api/v1/answer", {"query": "Hi", "strategy": "direct"}, format="json")
        chat = api.post("/v1/chat/completions", {"model": "avengers", "messages": [{"role": "user", "content": "Hi"}]},
                        format="json")
        streamed = api.post("/v1/chat/completions", {"model": "avengers", "stream": True,
                                                     "messages": [{"role": "user", "content": "Hi"}]}, format="json")
        streamed_text = (b"".join(streamed.streaming_content) if streamed.streaming else streamed.content).decode()
    assert echo.authorizations and all(a == f"Bearer {KEY}" for a in echo.authorizations)  # they were called
    shown = [answer.content.decode(), chat.content.decode(), streamed_text,
             json.dumps([[d.error, d.failures] for d in RoutingDecision.objects.all()], default=str)]
    for text in shown:
        assert INTERNAL not in text and KEY not in text and "python-httpx" not in text
    assert answer.status_code == 503 and "HTTP 500 (text/html)" in answer.json()["error"]["message"]
    assert "HTTP 502 (text/plain)" in chat.json()["error"]["message"]
