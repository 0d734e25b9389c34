"""Server-sent events as OpenAI streams them, and noticing a client that left.

Framing: every event is one ``data: <json>`` line and a blank line; the stream
ends with ``data: [DONE]``. The JSON is compact and has no raw newlines (JSON
escapes them), so one ``data:`` line always holds one whole chunk.

Disconnects: Starlette's ``StreamingResponse`` only notices a gone client when
a write fails on ASGI >= 2.4 servers, i.e. possibly one token late, and it never
closes our iterator explicitly. :class:`SSEResponse` listens for
``http.disconnect`` itself and always runs ``on_close`` so generation stops.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import anyio
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

DONE = b"data: [DONE]\n\n"
HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}  # no proxy buffering

T = TypeVar("T")


class ClientGone(Exception):
    """The client disconnected before the reply was ready."""


def sse_data(payload: dict[str, Any]) -> bytes:
    text = json.dumps(payload, ensure_ascii=False, separators=(",", ":"))
    return f"data: {text}\n\n".encode()


async def _until_disconnect(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


async def unless_disconnected(
    request: Request, work: Callable[[], Awaitable[T]], on_disconnect: Callable[[], None]
) -> T:
    """Await ``work()``; if the client disconnects first, call ``on_disconnect`` and raise.

    Call only after the request body has been read: from then on the ASGI
    ``receive`` channel carries nothing but the disconnect.
    """
    result: list[T] = []
    failure: list[Exception] = []
    async with anyio.create_task_group() as tg:

        async def watch() -> None:
            await _until_disconnect(request.receive)
            on_disconnect()
            tg.cancel_scope.cancel()

        async def run() -> None:
            # Errors are carried out by hand: a task group would wrap them in an
            # ExceptionGroup, and the app's handlers match plain exception types.
            try:
                result.append(await work())
            except Exception as exc:  # noqa: BLE001 - re-raised below, unwrapped
                failure.append(exc)
            tg.cancel_scope.cancel()

        tg.start_soon(watch)
        tg.start_soon(run)
    if failure:
        raise failure[0]
    if not result:
        raise ClientGone
    return result[0]


class SSEResponse(Response):
    media_type = "text/event-stream"

    def __init__(self, events: AsyncIterator[bytes], *, on_close: Callable[[], None]) -> None:
        # No Response.__init__: it would render an empty body and send Content-Length: 0.
        self.status_code = 200
        self.background = None
        self.init_headers(HEADERS)
        self._events = events
        self._on_close = on_close

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            async with anyio.create_task_group() as tg:

                async def stream() -> None:
                    await send(
                        {"type": "http.response.start", "status": 200, "headers": self.raw_headers}
                    )
                    async for chunk in self._events:
                        await send({"type": "http.response.body", "body": chunk, "more_body": True})
                    await send({"type": "http.response.body", "body": b"", "more_body": False})
                    tg.cancel_scope.cancel()

                async def listen() -> None:
                    await _until_disconnect(receive)
                    tg.cancel_scope.cancel()

                tg.start_soon(stream)
                tg.start_soon(listen)
        except* OSError:
            pass  # the client went away mid-write; on_close stops generation
        finally:
            self._on_close()
            aclose = getattr(self._events, "aclose", None)
            if aclose is not None:
                await aclose()
