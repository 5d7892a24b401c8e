"""The routing service: route a query through a router snapshot, answer it with the team, log the decision.

* ``tables``: what a request is served from (a snapshot's routing table, per process) and the models' rows.
* ``embedding``: one embedder per name per process, micro-batched, with a cache of recent queries.
* ``service``: ``Request`` (the one check of a request's bounds), ``route``, ``answer``, ``stream_direct``;
  they return ``Decision``, ``Answer`` and ``Stream``.
* ``decision_log``: writes every request's decision row after the response, in bulk.
* ``traffic``: the decision log's read side for the traffic page.
* ``api`` (POST /api/v1/route, /api/v1/answer), ``openai`` (/v1/chat/completions, /v1/models), ``views``
  (playground, traffic) turn the service's answers into their formats; ``urls`` mounts them.
"""
from __future__ import annotations


class ServingError(Exception):
    """A request the service cannot serve: ``status`` is the HTTP status to answer with."""

    def __init__(self, status: int, code: str, message: str, *, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message
        self.retry_after_s = retry_after_s
