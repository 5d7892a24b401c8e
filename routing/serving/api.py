"""POST /api/v1/route and POST /api/v1/answer. Thin: parse the body, make one ``service.Request``, shape the reply."""
from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from django.conf import settings
from drf_spectacular.utils import OpenApiResponse, extend_schema, inline_serializer
from rest_framework import exceptions, serializers
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from avengers_web.models import ApiToken
from avengers_web.routes import Routes
from avengers_web.throttling import TokenRateThrottle, retry_after as retry_after_header
from evaluation.core.grading import TASK_TYPES
from routing.core.dispatch import STRATEGIES
from routing.models import CATEGORY_CHARS, RoutingDecision
from routing.serving import ServingError, service

endpoints = Routes()

T = TypeVar("T")


class ServingFailed(exceptions.APIException):
    """A ServingError in DRF's terms, so the API's error handler shapes it like every other error."""

    def __init__(self, error: ServingError) -> None:
        super().__init__(detail=error.message, code=error.code)
        self.status_code = error.status
        self.retry_after_s = error.retry_after_s


def serve(call: Callable[[service.Request], T], **fields: Any) -> T:
    """Make the request and serve it with ``call``; a ServingError becomes the API's error.

    Parameters out of bounds raise the service's ValidationError, which the API's error handler answers as a 400
    naming the fields.
    """
    try:
        return call(service.Request(**fields))
    except ServingError as error:
        raise ServingFailed(error) from None


def who(request: Request) -> dict[str, Any]:
    """The request's user and token prefix, for the decision log."""
    token = request.auth if isinstance(request.auth, ApiToken) else None
    return {"user": request.user, "token_prefix": token.prefix if token is not None else ""}


def answer_fields(v: Mapping[str, Any], request: Request) -> dict[str, Any]:
    """The fields of an answering ``service.Request`` from validated input; what it leaves out gets the defaults."""
    return {
        "query": v["query"], "strategy": v.get("strategy") or settings.DEFAULT_STRATEGY,
        "samples": v.get("samples") or settings.DEFAULT_SAMPLES,
        "temperature": v["temperature"] if v.get("temperature") is not None else settings.DEFAULT_TEMPERATURE,
        "task_type": v.get("task_type"), "category": v.get("category", ""), "snapshot_id": v.get("snapshot"),
        "max_tokens": v.get("max_tokens"), "timeout_s": v.get("timeout_s"), **who(request),
    }


# --- the replies ------------------------------------------------------------------------------------------


def decision_body(decision: service.Decision) -> dict[str, Any]:
    """The JSON of a routing decision: POST /api/v1/route's body, and ``decision`` in an answer's."""
    route = decision.route
    return {
        "id": decision.id,
        "snapshot": {"id": decision.snapshot.id, "version": decision.snapshot.version,
                     "router": decision.snapshot.router},
        "cluster": route.cluster,
        "similarity": round(route.similarity, 6),
        "category": route.category,
        "task_type": decision.task_type,
        "runner_ups": [{"cluster": c, "similarity": round(s, 6)} for c, s in route.runner_ups],
        "candidates": [c.as_json() for c in decision.candidates],
        "chosen": decision.chosen,
        "timings_ms": dict(decision.timings_ms),
    }


def answer_body(answer: service.Answer) -> dict[str, Any]:
    """The JSON of an answer: POST /api/v1/answer's body, and ``avengers`` in a chat completion."""
    return {
        "id": answer.id,
        "answer": answer.answer,
        "answer_key": answer.answer_key,
        "response": answer.response,
        "model": answer.model,
        "strategy": answer.strategy,
        "votes": [{"answer": a, "votes": v} for a, v in answer.vote.tally],
        "agreement": round(answer.vote.agreement, 6),
        "samples": [{"model": s.model, "index": s.index, "answer": s.answer, "key": s.key, "text": s.text,
                     "finish_reason": s.finish_reason} for s in answer.samples],
        "fallback": answer.fallback,
        "failures": [{"model": f.model, "kind": f.kind, "message": f.message} for f in answer.failures],
        "usage": {"prompt_tokens": answer.prompt_tokens, "completion_tokens": answer.completion_tokens},
        "timings_ms": dict(answer.timings_ms),
        "decision": decision_body(answer.decision),
    }


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


# The bounds the server sets (AVENGERS_MAX_*, the deadline) are the service's to check (service.Request); no
# docstrings on serializers and views here: the schema would show them.
class AnswerInput(RouteInput):
    strategy = serializers.ChoiceField(choices=tuple(STRATEGIES), required=False,
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


_candidates = inline_serializer("RouteCandidate", {
    "model": serializers.CharField(), "score": serializers.FloatField(allow_null=True),
    "rank": serializers.IntegerField(), "in_team": serializers.BooleanField(),
    "skipped": serializers.CharField(required=False), "failed": serializers.CharField(required=False),
}, many=True)
DECISION_SCHEMA = inline_serializer("RouteDecision", {
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
ANSWER_SCHEMA = inline_serializer("Answer", {
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
    "decision": DECISION_SCHEMA,
})
ERRORS = {
    400: OpenApiResponse(description="Invalid input; the message says which field and why."),
    404: OpenApiResponse(description="The snapshot named does not exist."),
    409: OpenApiResponse(description="The snapshot named is not built."),
    413: OpenApiResponse(description="The query is longer than AVENGERS_MAX_QUERY_CHARS."),
    429: OpenApiResponse(description="This token's requests per minute are used up; see Retry-After."),
    503: OpenApiResponse(description="No active snapshot, or no model could answer; the message says why."),
}


# What every endpoint that sends queries shares: the token's rate limit, and Retry-After when it is used up.
class ServingApi(APIView):
    throttle_classes = [TokenRateThrottle]
    write_permissions: dict[str, str | None] = {"POST": None}  # every role may send queries; read-only tokens not

    def handle_exception(self, exc: Exception) -> Response:
        response = super().handle_exception(exc)
        retry_after = getattr(exc, "retry_after_s", None)
        if retry_after:
            response["Retry-After"] = str(retry_after_header(retry_after))
        return response


@endpoints("route", name="api-route")
class RouteApi(ServingApi):
    @extend_schema(request=RouteInput, responses={200: DECISION_SCHEMA, **ERRORS}, tags=["routing"],
                   summary="Route a query (no generation)",
                   description="Embed the query, find the nearest cluster of the active snapshot (or `snapshot`), "
                               "and return the models in routing order with their scores in that cluster.")
    def post(self, request: Request) -> Response:
        v = route_input(request.data)
        decision = serve(service.route, query=v["query"], endpoint=RoutingDecision.Endpoint.ROUTE,
                         snapshot_id=v.get("snapshot"), category=v.get("category", ""), **who(request))
        return Response(decision_body(decision))


@endpoints("answer", name="api-answer")
class AnswerApi(ServingApi):
    @extend_schema(request=AnswerInput, responses={200: ANSWER_SCHEMA, **ERRORS}, tags=["routing"],
                   summary="Answer a query with the routed team",
                   description="Route, sample the chosen model(s) (10 samples at temperature 0.7 by default), extract "
                               "and normalise each sample's answer, vote, and return the answer with the tally, the "
                               "decision, token counts and timings. If a model fails, the next one in the cluster's "
                               "ranking answers and `fallback` is true.")
    def post(self, request: Request) -> Response:
        data = AnswerInput(data=request.data)
        data.is_valid(raise_exception=True)
        answer = serve(service.answer, endpoint=RoutingDecision.Endpoint.ANSWER,
                       **answer_fields(data.validated_data, request))
        return Response(answer_body(answer))
