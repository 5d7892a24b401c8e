"""A fake LLM client for unit tests of the logic around generation (never proof that generation works)."""
from __future__ import annotations

import threading
from collections.abc import Callable

from evaluation.core.generation import ChatRequest, Choice, Completion, GenerationError


class FakeLLMClient:
    """Answer with ``reply(request, i)`` for the i-th choice, or raise what ``fail(request)`` returns."""

    def __init__(self, reply: Callable[[ChatRequest, int], str] | None = None,
                 fail: Callable[[ChatRequest], GenerationError | None] | None = None) -> None:
        self.reply = reply or (lambda request, i: "Answer: 4")
        self.fail = fail or (lambda request: None)
        self.requests: list[ChatRequest] = []
        self._lock = threading.Lock()

    @property
    def calls(self) -> int:
        return len(self.requests)

    def complete(self, request: ChatRequest) -> Completion:
        with self._lock:
            self.requests.append(request)
        error = self.fail(request)
        if error is not None:
            raise error
        choices = tuple(Choice(text=self.reply(request, i), finish_reason="stop") for i in range(request.n))
        return Completion(choices=choices, prompt_tokens=10, completion_tokens=5 * request.n, latency_ms=1.0,
                          attempts=1, server_model=request.model)
