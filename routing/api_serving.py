"""Routing endpoints: POST /api/v1/route, POST /api/v1/answer, and the OpenAI-compatible /v1/chat/completions
and /v1/models. Thin: parse and validate, call ``routing.serving``, shape the reply."""
from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

from django.conf import settings
from django.http import StreamingHttpResponse
from drf_spectacular.utils import OpenApiResponse, extend_schema, inline_serializer
from rest_framework import exceptions, serializers, status
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from avengers_web.models import ApiToken
from avengers_web.parsing import parse_id
from avengers_web.throttling import TokenRateThrottle
from evaluation.core.grading import TASK_TYPES
from routing import serving
from routing.core.serving import STRATEGIES
from routing.models import CATEGORY_CHARS, RoutingDecision

MODEL_NAME = "avengers"


class ServingFailed(exceptions.APIException):
    """A ServingError in DRF's terms, so the API's error handler shapes it like every other error."""

    def __init__(self, error: serving.ServingError) -> None:
        super().__init__(detail=error.message, code=error.code)
        self.status_code = error.status
        self.retry_after_s = error.retry_after_s


def _call(function: Any, request: serving.Request) -> Any:
    try:
        return function(request)
    except serving.ServingError as error:
        raise ServingFailed(error) from None


def _who(request: Request) -> dict[str, Any]:
    token = request.auth if isinstance(request.auth, ApiToken) else None
    return {"user": request.user, "token_prefix": token.prefix if token is not None else ""}


# --- serializers ------------------------------------------------------------------------------------------


class RouteInput(serializers.Serializer):
    query = serializers.CharField(trim_whitespace=False, help_text="The query to route.")
    snapshot = serializers.IntegerField(required=False, min_value=1,
                                        help_text="Route with this snapshot instead of the active one.")
    category = serializers.CharField(required=False, allow_blank=True, max_length=CATEGORY_CHARS,
                                     help_text="A label of your own (e.g. the dataset) for the traffic charts.")


def route_input(data: Any) -> dict[str, Any]:
    """``RouteInput``'s validated data for ``data``; raises its ValidationError (a 400 naming the field).

    The route endpoint's budget is a few milliseconds, and a serializer instance costs some 70 µs (a deep copy of
    its fields, a scan of the query for surrogates in Python). A plain body (a JSON object whose fields have the
    types the serializer would keep as they are) is checked here with the same rules and the same result; anything
    else goes through the serializer, which accepts it the same way or says what is wrong.
    """
    if isinstance(data, dict):
        query, snapshot, category = data.get("query"), data.get("snapshot"), data.get("category", "")
        if (type(query) is str and query and _clean(query)
                and (snapshot is None and "snapshot" not in data or type(snapshot) is int and snapshot >= 1)
                and type(category) is str and _clean(category) and len(category := category.strip()) <= CATEGORY_CHARS):
            out: dict[str, Any] = {"query": query}
            if snapshot is not None:
                out["snapshot"] = snapshot
            if "category" in data:
                out["category"] = category
            return out
    serializer = RouteInput(data=data)
    serializer.is_valid(raise_exception=True)
    return dict(serializer.validated_data)


def _clean(text: str) -> bool:
    """Neither NUL nor a lone surrogate, which CharField refuses (a surrogate cannot be encoded as UTF-8)."""
    if "\x00" in text:
        return False
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


class AnswerInput(RouteInput):
    strategy = serializers.ChoiceField(choices=STRATEGIES, required=False,
                                       help_text="direct: one sample of the best model; self_consistency: majority "
                                                 "vote over its samples; model_switch: add the next model's samples "
                                                 "while agreement is below the threshold.")
    samples = serializers.IntegerField(required=False, min_value=1, help_text="Samples per model (default 10).")
    temperature = serializers.FloatField(required=False, min_value=0.0, max_value=2.0)
    task_type = serializers.ChoiceField(choices=TASK_TYPES, required=False,
                                        help_text="How answers are extracted and compared; default: the task type "
                                                  "of most train queries in the chosen cluster.")
    max_tokens = serializers.IntegerField(required=False, min_value=1)
    timeout_s = serializers.FloatField(required=False, min_value=1.0,
                                       help_text="The request's deadline in seconds, from 1 to the server's "
                                                 "AVENGERS_ROUTE_DEADLINE_S.")

    def validate_samples(self, value: int) -> int:
        if value > settings.MAX_SAMPLES:
            raise serializers.ValidationError(f"at most {settings.MAX_SAMPLES} samples")
        return value

    def validate_max_tokens(self, value: int) -> int:
        if value > settings.MAX_ANSWER_TOKENS:
            raise serializers.ValidationError(f"at most {settings.MAX_ANSWER_TOKENS}")
        return value

    def validate_timeout_s(self, value: float) -> float:
        if value > settings.ROUTE_DEADLINE_S:
            raise serializers.ValidationError(f"at most {settings.ROUTE_DEADLINE_S:g}")
        return value


_candidates = inline_serializer("RouteCandidate", {
    "model": serializers.CharField(), "score": serializers.FloatField(allow_null=True),
    "rank": serializers.IntegerField(), "in_team": serializers.BooleanField(),
    "skipped": serializers.CharField(required=False), "failed": serializers.CharField(required=False),
}, many=True)
_decision = inline_serializer("RouteDecision", {
    "id": serializers.CharField(),
    "snapshot": inline_serializer("RouteSnapshot", {"id": serializers.IntegerField(),
                                                    "version": serializers.IntegerField(),
                                                    "router": serializers.CharField()}),
    "cluster": serializers.IntegerField(), "similarity": serializers.FloatField(),
    "category": serializers.CharField(), "task_type": serializers.CharField(),
    "runner_ups": inline_serializer("RunnerUp", {"cluster": serializers.IntegerField(),
                                                 "similarity": serializers.FloatField()}, many=True),
    "candidates": _candidates,
    "chosen": serializers.CharField(help_text="The first candidate that can be called; empty if none."),
    "timings_ms": serializers.DictField(child=serializers.FloatField()),
})
_answer = inline_serializer("Answer", {
    "id": serializers.CharField(), "answer": serializers.CharField(help_text="The winning answer as extracted."),
    "answer_key": serializers.CharField(allow_null=True, help_text="Its normalised form, as in votes."),
    "response": serializers.CharField(help_text="The full text of the first sample that voted for it."),
    "model": serializers.CharField(), "strategy": serializers.CharField(),
    "votes": inline_serializer("Votes", {"answer": serializers.CharField(), "votes": serializers.IntegerField()},
                               many=True),
    "agreement": serializers.FloatField(),
    "samples": inline_serializer("AnswerSample", {
        "model": serializers.CharField(), "index": serializers.IntegerField(),
        "answer": serializers.CharField(allow_null=True), "key": serializers.CharField(allow_null=True),
        "text": serializers.CharField(), "finish_reason": serializers.CharField()}, many=True),
    "fallback": serializers.BooleanField(),
    "failures": inline_serializer("AnswerFailure", {"model": serializers.CharField(), "kind": serializers.CharField(),
                                                    "message": serializers.CharField()}, many=True),
    "usage": serializers.DictField(child=serializers.IntegerField(allow_null=True)),
    "timings_ms": serializers.DictField(child=serializers.FloatField()),
    "decision": _decision,
})
_errors = {
    400: OpenApiResponse(description="Invalid input; the message says which field and why."),
    404: OpenApiResponse(description="The snapshot named does not exist."),
    409: OpenApiResponse(description="The snapshot named is not built."),
    413: OpenApiResponse(description="The query is longer than AVENGERS_MAX_QUERY_CHARS."),
    429: OpenApiResponse(description="This token's requests per minute are used up; see Retry-After."),
    503: OpenApiResponse(description="No active snapshot, or no model could answer; the message says why."),
}


class _ServingApi(APIView):
    throttle_classes = [TokenRateThrottle]
    write_permissions: dict[str, str | None] = {"POST": None}  # every role may send queries; read-only tokens not

    def handle_exception(self, exc: Exception) -> Response:
        response = super().handle_exception(exc)
        retry_after = getattr(exc, "retry_after_s", None)
        if retry_after:
            response["Retry-After"] = str(max(1, int(retry_after + 0.999)))
        return response


class RouteApi(_ServingApi):
    @extend_schema(request=RouteInput, responses={200: _decision, **_errors}, tags=["routing"],
                   summary="Route a query (no generation)",
                   description="Embed the query, find the nearest cluster of the active snapshot (or `snapshot`), "
                               "and return the models in routing order with their scores in that cluster.")
    def post(self, request: Request) -> Response:
        v = route_input(request.data)
        body = _call(serving.route, serving.Request(
            query=v["query"], endpoint=RoutingDecision.Endpoint.ROUTE, snapshot_id=v.get("snapshot"),
            category=v.get("category", ""), **_who(request)))
        return Response(body)


def _answer_request(v: dict[str, Any], endpoint: str, request: Request) -> serving.Request:
    return serving.Request(
        query=v["query"], endpoint=endpoint, strategy=v.get("strategy") or settings.DEFAULT_STRATEGY,
        samples=v.get("samples") or settings.DEFAULT_SAMPLES,
        temperature=v["temperature"] if v.get("temperature") is not None else settings.DEFAULT_TEMPERATURE,
        task_type=v.get("task_type"), category=v.get("category", ""), snapshot_id=v.get("snapshot"),
        max_tokens=v.get("max_tokens"), timeout_s=v.get("timeout_s"), **_who(request))


class AnswerApi(_ServingApi):
    @extend_schema(request=AnswerInput, responses={200: _answer, **_errors}, tags=["routing"],
                   summary="Answer a query with the routed team",
                   description="Route, sample the chosen model(s) (10 samples at temperature 0.7 by default), extract "
                               "and normalise each sample's answer, vote, and return the answer with the tally, the "
                               "decision, token counts and timings. If a model fails, the next one in the cluster's "
                               "ranking answers and `fallback` is true.")
    def post(self, request: Request) -> Response:
        data = AnswerInput(data=request.data)
        data.is_valid(raise_exception=True)
        body = _call(serving.answer, _answer_request(data.validated_data, RoutingDecision.Endpoint.ANSWER, request))
        return Response(body)


# --- OpenAI-compatible ------------------------------------------------------------------------------------


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
    strategy = serializers.ChoiceField(choices=STRATEGIES, required=False,
                                       help_text="Avengers extension; default: direct when streaming, else the "
                                                 "server's default (self_consistency).")
    samples = serializers.IntegerField(required=False, min_value=1)
    task_type = serializers.ChoiceField(choices=TASK_TYPES, required=False)
    category = serializers.CharField(required=False, allow_blank=True, max_length=CATEGORY_CHARS)
    timeout_s = serializers.FloatField(required=False, min_value=1.0)
    user = serializers.CharField(required=False, allow_blank=True, max_length=256)

    validate_samples = AnswerInput.validate_samples
    validate_timeout_s = AnswerInput.validate_timeout_s

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        tokens = attrs.get("max_completion_tokens") or attrs.get("max_tokens")
        if tokens is not None and tokens > settings.MAX_ANSWER_TOKENS:
            raise serializers.ValidationError({"max_tokens": f"at most {settings.MAX_ANSWER_TOKENS}"})
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
    raise ServingFailed(serving.ServingError(
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
    "avengers": _answer,
})


_chat_reply = "A chat completion; with stream: true, server-sent chat.completion.chunk events (text/event-stream)."
# One server-sent event of a streamed chat (the schema of each event, as OpenAPI 3.2's itemSchema means it).
_chat_event = inline_serializer("ChatCompletionEvent", {
    "data": serializers.CharField(help_text="A chat.completion.chunk as JSON; the last event's data is [DONE]."),
})


class ChatCompletionsApi(_ServingApi):
    @extend_schema(
        request=ChatInput, tags=["openai"], summary="OpenAI-compatible chat completion, routed",
        responses={(200, "application/json"): OpenApiResponse(_chat_completion, description=_chat_reply),
                   (200, "text/event-stream"): OpenApiResponse(_chat_event, description=_chat_reply),
                   **_errors},
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
        req = _answer_request({
            "query": query, "strategy": strategy, "samples": v.get("samples"), "temperature": v.get("temperature"),
            "task_type": v.get("task_type"), "category": v.get("category", ""), "snapshot": snapshot_id,
            "max_tokens": v.get("max_completion_tokens") or v.get("max_tokens"), "timeout_s": v.get("timeout_s"),
        }, RoutingDecision.Endpoint.CHAT, request)
        req.messages = messages
        created = int(time.time())
        if stream and strategy == "direct":
            started = _call(serving.stream_direct, req)
            model_name = f"{MODEL_NAME}/{started.decision['snapshot']['id']}"
            response = StreamingHttpResponse(
                self._stream(started, model_name, created), content_type="text/event-stream")
            for key, value in _headers(started.decision, started.model, started.fallback).items():
                response[key] = value
            response["Cache-Control"] = "no-cache"
            response["X-Accel-Buffering"] = "no"
            return response
        body = _call(serving.answer, req)
        model_name = f"{MODEL_NAME}/{body['decision']['snapshot']['id']}"
        completion_id = "chatcmpl-" + body["id"]
        headers = _headers(body["decision"], body["model"], body["fallback"])
        if stream:
            # A voted answer exists only after every sample is in: it is sent as one chunk.
            chunks = [
                {"id": completion_id, "object": "chat.completion.chunk", "created": created, "model": model_name,
                 "choices": [{"index": 0, "delta": {"role": "assistant", "content": body["response"]},
                              "finish_reason": None}]},
                {"id": completion_id, "object": "chat.completion.chunk", "created": created, "model": model_name,
                 "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}], "avengers": body},
            ]
            response = StreamingHttpResponse(iter([*(_sse(c) for c in chunks), _sse("[DONE]")]),
                                             content_type="text/event-stream")
            for key, value in headers.items():
                response[key] = value
            return response
        winner = next((s for s in body["samples"] if s["model"] == body["model"] and s["text"] == body["response"]),
                      None)
        usage = body["usage"]
        return Response({
            "id": completion_id, "object": "chat.completion", "created": created, "model": model_name,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": body["response"]},
                         "finish_reason": (winner or {}).get("finish_reason") or "stop"}],
            "usage": {"prompt_tokens": usage["prompt_tokens"], "completion_tokens": usage["completion_tokens"],
                      "total_tokens": None if None in (usage["prompt_tokens"], usage["completion_tokens"])
                      else usage["prompt_tokens"] + usage["completion_tokens"]},
            "avengers": body,
        }, headers=headers)

    @staticmethod
    def _stream(started: serving.Stream, model_name: str, created: int) -> Iterator[bytes]:
        completion_id = "chatcmpl-" + started.request_id
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
                    "avengers": {"decision": started.decision, "model": started.model,
                                 "fallback": started.fallback}})
        yield _sse("[DONE]")


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
        rows = serving.snapshot_choices()
        active = next((r for r in rows if r["is_active"]), None)
        data = [{"id": MODEL_NAME, "object": "model", "created": int(active["created_at"].timestamp()) if active else 0,
                 "owned_by": "avengers", "active": active is not None, "version": active["version"] if active else 0}]
        data += [{"id": f"{MODEL_NAME}/{r['id']}", "object": "model", "created": int(r["created_at"].timestamp()),
                  "owned_by": "avengers", "active": r["is_active"], "version": r["version"]} for r in rows]
        return Response({"object": "list", "data": data}, status=status.HTTP_200_OK)

