"""Drive the relay's coroutines from plain (synchronous) tests.

Each adapter owns one event loop for its lifetime: the HTTP client's keep-alive
connections and the semaphore belong to the loop they were first used on.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

from cloud_relay.llm import ChatRequest, Completion, OpenAiChat

R = TypeVar("R")


class LoopRunner:
    """One event loop, run to completion per call."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()

    def run(self, coro: Coroutine[Any, Any, R]) -> R:
        return self.loop.run_until_complete(coro)

    def close(self) -> None:
        if not self.loop.is_closed():
            self.loop.close()


class SyncChat:
    """:class:`OpenAiChat` with a blocking ``complete``, as the tests call it."""

    def __init__(self, chat: OpenAiChat) -> None:
        self.chat = chat
        self._runner = LoopRunner()

    def complete(self, request: ChatRequest, *, deadline: float) -> Completion:
        return self._runner.run(self.chat.complete(request, deadline=deadline))

    def close(self) -> None:
        self._runner.run(self.chat.aclose())
        self._runner.close()
