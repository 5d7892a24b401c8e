"""The OpenAI wire format: POST /v1/chat/completions (plain and server-sent events) and GET /v1/models.

Thin: parse the chat, make one ``service.Request`` from its last user message, shape the service's answer as a
chat completion with the Avengers answer and decision attached (``avengers``, X-Avengers-* headers).
"""
from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

from django.conf import settings
from django.http import StreamingHttpResponse
from drf_spectacular.utils import OpenApiResponse, extend_schema, inline_serializer
from rest_framework import serializers, status
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from avengers_web.parsing import parse_id
from avengers_web.routes import Routes
from evaluation.core.grading import TASK_TYPES
from routing.core.dispatch import STRATEGIES
from routing.models import CATEGORY_CHARS, RoutingDecision
from routing.serving import ServingError, service, tables
from routing.serving.api import (
    ANSWER_SCHEMA,
    ERRORS,
    ServingApi,
    ServingFailed,
    answer_body,
    answer_fields,
    decision_body,
    serve,
)

endpoints = Routes()

MODEL_NAME = "avengers"


class ChatMessage(serializers.Serializer):
    role = serializers.ChoiceField(choices=["system", "developer", "user", "assistant", "tool"])
    content = serializers.JSONField(help_text="A string, or a list of {\"type\": \"text\", \"text\": ...} parts.")

    def validate_content(self, value: Any) -> str:
        if isinstance(value, str):
            return value
        if isinstance(value, list) and all(isinstance(p, dict) for p in value):
            texts = [p.get("text") for p in value if p.get("type") == "text"]
            if len(texts) == len(value) and all(isinstance(t, str) for t in texts):
                return "".join(texts)
            raise serializers.ValidationError("only text parts are supported")
        if value is None:
            return ""
        raise serializers.ValidationError("must be a string or a list of text parts")


class ChatInput(serializers.Serializer):
    model = serializers.CharField(help_text='"avengers" (the active snapshot) or "avengers/<snapshot id>".')
    messages = ChatMessage(many=True, allow_empty=False)
    stream = serializers.BooleanField(required=False, default=False)
    temperature = serializers.FloatField(required=False, allow_null=True, min_value=0.0, max_value=2.0)
    max_tokens = serializers.IntegerField(required=False, allow_null=True, min_value=1)
    max_completion_tokens = serializers.IntegerField(required=False, allow_null=True, min_value=1)
    n = serializers.IntegerField(required=False, allow_null=True, min_value=1, max_value=1,
                                 help_text="Only 1: the team's samples are voted into one answer.")
    strategy = serializers.ChoiceField(choices=tuple(STRATEGIES), required=False,
                                       help_text="Avengers extension; default: direct when streaming, else the "
                                                 "server's default (self_consistency).")
    samples = serializers.IntegerField(required=False, min_value=1)
    task_type = serializers.ChoiceField(choices=TASK_TYPES, required=False)
    category = serializers.CharField(required=False, allow_blank=True, max_length=CATEGORY_CHARS)
    timeout_s = serializers.FloatField(required=False, min_value=1.0)
    user = serializers.CharField(required=False, allow_blank=True, max_length=256)

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        users = [m for m in attrs["messages"] if m["role"] == "user"]
        if not users or not users[-1]["content"].strip():
            raise serializers.ValidationError({"messages": "the conversation needs a user message with text; "
                                                           "the last one is what gets routed"})
        return attrs


def _snapshot_of(model: str) -> int | None:
    if model == MODEL_NAME:
        return None
    snapshot_id = parse_id(model.removeprefix(MODEL_NAME + "/")) if model.startswith(MODEL_NAME + "/") else None
    if snapshot_id:  # 0 names no snapshot
        return snapshot_id
    raise ServingFailed(ServingError(
        404, "model_not_found", f"The model {model!r} does not exist here; use \"avengers\" (the active router "
                                "snapshot) or \"avengers/<snapshot id>\" (GET /v1/models lists them)."))


def _headers(decision: dict[str, Any], model: str, fallback: bool) -> dict[str, str]:
    return {
        "X-Avengers-Request-Id": decision["id"],
        "X-Avengers-Snapshot": str(decision["snapshot"]["id"]),
        "X-Avengers-Cluster": str(decision["cluster"]),
        "X-Avengers-Similarity": f"{decision['similarity']:.4f}",
        "X-Avengers-Model": model,
        "X-Avengers-Fallback": "true" if fallback else "false",
    }


def _sse(payload: dict[str, Any] | str) -> bytes:
    data = payload if isinstance(payload, str) else json.dumps(payload, separators=(",", ":"))
    return f"data: {data}\n\n".encode()


_chat_completion = inline_serializer("ChatCompletion", {
    "id": serializers.CharField(), "object": serializers.CharField(), "created": serializers.IntegerField(),
    "model": serializers.CharField(),
    "choices": inline_serializer("ChatChoice", {
        "index": serializers.IntegerField(),
        "message": inline_serializer("ChatReply", {"role": serializers.CharField(),
                                                   "content": serializers.CharField()}),
        "finish_reason": serializers.CharField()}, many=True),
    "usage": serializers.DictField(child=serializers.IntegerField(allow_null=True)),
    "avengers": ANSWER_SCHEMA,
})


_chat_reply = "A chat completion; with stream: true, server-sent chat.completion.chunk events (text/event-stream)."
# One server-sent event of a streamed chat (the schema of each event, as OpenAPI 3.2's itemSchema means it).
_chat_event = inline_serializer("ChatCompletionEvent", {
    "data": serializers.CharField(help_text="A chat.completion.chunk as JSON; the last event's data is [DONE]."),
})


@endpoints("chat/completions", name="openai-chat-completions")
class ChatCompletionsApi(ServingApi):
    @extend_schema(
        request=ChatInput, tags=["openai"], summary="OpenAI-compatible chat completion, routed",
        responses={(200, "application/json"): OpenApiResponse(_chat_completion, description=_chat_reply),
                   (200, "text/event-stream"): OpenApiResponse(_chat_event, description=_chat_reply),
                   **ERRORS},
        description="Send `model: \"avengers\"`: the last user message is routed; the reply's content is the voted "
                    "answer's full response, the decision is in `avengers` and in X-Avengers-* headers. "
                    "`stream: true` streams the chosen model's tokens (strategy direct).")
    def post(self, request: Request) -> Any:
        data = ChatInput(data=request.data)
        data.is_valid(raise_exception=True)
        v = data.validated_data
        snapshot_id = _snapshot_of(v["model"])
        messages = tuple({"role": m["role"], "content": m["content"]} for m in v["messages"])
        query = [m for m in messages if m["role"] == "user"][-1]["content"]
        stream = v.get("stream", False)
        strategy = v.get("strategy") or ("direct" if stream else settings.DEFAULT_STRATEGY)
        fields = answer_fields({
            "query": query, "strategy": strategy, "samples": v.get("samples"), "temperature": v.get("temperature"),
            "task_type": v.get("task_type"), "category": v.get("category", ""), "snapshot": snapshot_id,
            "max_tokens": v.get("max_completion_tokens") or v.get("max_tokens"), "timeout_s": v.get("timeout_s"),
        }, request)
        created = int(time.time())
        if stream and strategy == "direct":
            started = serve(service.stream_direct, endpoint=RoutingDecision.Endpoint.CHAT, messages=messages, **fields)
            decision = decision_body(started.decision)
            model_name = f"{MODEL_NAME}/{started.decision.snapshot.id}"
            response = StreamingHttpResponse(
                self._stream(started, decision, model_name, created), content_type="text/event-stream")
            for key, value in _headers(decision, started.model, started.fallback).items():
                response[key] = value
            response["Cache-Control"] = "no-cache"
            response["X-Accel-Buffering"] = "no"
            return response
        answer = serve(service.answer, endpoint=RoutingDecision.Endpoint.CHAT, messages=messages, **fields)
        body = answer_body(answer)
        model_name = f"{MODEL_NAME}/{answer.decision.snapshot.id}"
        completion_id = "chatcmpl-" + answer.id
        headers = _headers(body["decision"], answer.model, answer.fallback)
        if stream:
            # A voted answer exists only after every sample is in: it is sent as one chunk.
            chunks = [
                {"id": completion_id, "object": "chat.completion.chunk", "created": created, "model": model_name,
                 "choices": [{"index": 0, "delta": {"role": "assistant", "content": answer.response},
                              "finish_reason": None}]},
                {"id": completion_id, "object": "chat.completion.chunk", "created": created, "model": model_name,
                 "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}], "avengers": body},
            ]
            response = StreamingHttpResponse(iter([*(_sse(c) for c in chunks), _sse("[DONE]")]),
                                             content_type="text/event-stream")
            for key, value in headers.items():
                response[key] = value
            return response
        winner = next((s for s in answer.samples if s.model == answer.model and s.text == answer.response), None)
        prompt, completion = answer.prompt_tokens, answer.completion_tokens
        return Response({
            "id": completion_id, "object": "chat.completion", "created": created, "model": model_name,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": answer.response},
                         "finish_reason": (winner.finish_reason if winner else None) or "stop"}],
            "usage": {"prompt_tokens": prompt, "completion_tokens": completion,
                      "total_tokens": None if prompt is None or completion is None else prompt + completion},
            "avengers": body,
        }, headers=headers)

    @staticmethod
    def _stream(started: service.Stream, decision: dict[str, Any], model_name: str, created: int) -> Iterator[bytes]:
        completion_id = "chatcmpl-" + started.decision.id
        base = {"id": completion_id, "object": "chat.completion.chunk", "created": created, "model": model_name}
        yield _sse({**base, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""},
                                         "finish_reason": None}]})
        finish = "stop"
        try:
            for piece in started.pieces:
                yield _sse({**base, "choices": [{"index": 0, "delta": {"content": piece}, "finish_reason": None}]})
        except Exception as exc:  # noqa: BLE001 - headers are gone: the error can only travel as an event
            finish = "error"
            yield _sse({"error": {"message": str(getattr(exc, "message", exc)), "type": "server_error",
                                  "code": "stream_broken"}})
        yield _sse({**base, "choices": [{"index": 0, "delta": {}, "finish_reason": finish}],
                    "avengers": {"decision": decision, "model": started.model, "fallback": started.fallback}})
        yield _sse("[DONE]")


@endpoints("models", name="openai-models")
class ModelsApi(APIView):
    @extend_schema(tags=["openai"], summary="OpenAI-compatible model list",
                   responses={200: inline_serializer("ModelList", {
                       "object": serializers.CharField(),
                       "data": inline_serializer("ModelEntry", {
                           "id": serializers.CharField(), "object": serializers.CharField(),
                           "created": serializers.IntegerField(), "owned_by": serializers.CharField(),
                           "active": serializers.BooleanField(), "version": serializers.IntegerField(),
                       }, many=True)})})
    def get(self, request: Request) -> Response:
        rows = tables.snapshot_choices()
        active = next((r for r in rows if r["is_active"]), None)
        data = [{"id": MODEL_NAME, "object": "model", "created": int(active["created_at"].timestamp()) if active else 0,
                 "owned_by": "avengers", "active": active is not None, "version": active["version"] if active else 0}]
        data += [{"id": f"{MODEL_NAME}/{r['id']}", "object": "model", "created": int(r["created_at"].timestamp()),
                  "owned_by": "avengers", "active": r["is_active"], "version": r["version"]} for r in rows]
        return Response({"object": "list", "data": data}, status=status.HTTP_200_OK)
