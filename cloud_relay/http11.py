"""The relay's one POST to the LLM: h11 (httpx's own HTTP/1.1 engine) over asyncio streams.

Why not ``httpx.AsyncClient``: against an instant server on loopback it costs
~0.6 ms of CPU per request on one connection and ~1.1 ms with 16 in flight
(anyio and the pool's locks), more than the whole relay may spend per
escalation. h11 driven directly over asyncio streams costs ~0.1 ms. h11 does all
of HTTP/1.1 (request rendering, response framing by ``Content-Length``,
``chunked`` or close, interim 1xx, keep-alive, CONNECT); this module only adds
what httpx adds on top, for this one use:

* TLS: the context is ``httpx.create_ssl_context()`` (certifi, or
  ``SSL_CERT_FILE``/``SSL_CERT_DIR``), hostname checked;
* proxies from ``HTTPS_PROXY``/``HTTP_PROXY``/``ALL_PROXY``/``NO_PROXY``: an
  ``http://`` target is forwarded (absolute-form request target), an
  ``https://`` one tunnelled with ``CONNECT``; ``user:pass@`` in the proxy URL
  becomes ``Proxy-Authorization: Basic``;
* keep-alive: idle connections are reused newest first and dropped after
  ``keepalive_expiry_s`` (before the 5 s after which uvicorn and gunicorn close
  them, so a request is never written into the server's close) or once the
  server has closed them;
* connect, write and read timeouts (read: the longest silence), all capped by
  the caller's absolute deadline, so a server that trickles bytes cannot hold a
  request past it; a ``Content-Encoding`` of gzip or deflate is decoded.

Failures are :class:`HttpError`, named like httpx's exceptions (``ReadTimeout``,
``ConnectError``, ``RemoteProtocolError``...). A connection that failed in any
way, or whose request was cancelled, is closed, never reused. No HTTP/2, no
redirects, no cookies: the relay's POST needs none of them.
"""

from __future__ import annotations

import asyncio
import base64
import select
import ssl
import time
import urllib.request
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import cast
from urllib.parse import unquote, urlsplit

import h11
import httpx

#: Bytes asked of the socket per read.
_READ_SIZE = 65536
#: The failure named after the phase it happened in (the timeout of that phase).
_ERROR_OF = {
    "ConnectTimeout": "ConnectError",
    "WriteTimeout": "WriteError",
    "ReadTimeout": "ReadError",
}

Headers = Sequence[tuple[str, str]]


class HttpError(Exception):
    """The exchange failed; ``kind`` names it as httpx would (``ReadTimeout``...)."""

    def __init__(self, kind: str, message: str) -> None:
        self.kind = kind
        super().__init__(message)

    @property
    def timeout(self) -> bool:
        return self.kind.endswith("Timeout")


@dataclass(frozen=True, slots=True)
class Timeouts:
    """Seconds per phase; each is further capped by the request's deadline."""

    connect: float
    write: float
    read: float  # the longest silence while waiting for the response


@dataclass(frozen=True, slots=True)
class Response:
    status: int
    headers: Mapping[str, str]  # lower-case names; a repeated header keeps its last value
    body: bytes


@dataclass(frozen=True, slots=True)
class _Endpoint:
    scheme: str
    host: str
    port: int

    @classmethod
    def parse(cls, url: str) -> _Endpoint:
        parts = urlsplit(url if "://" in url else f"http://{url}")
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) URL: {url!r}")
        port = parts.port or (443 if parts.scheme == "https" else 80)
        return cls(parts.scheme, parts.hostname, port)

    @property
    def authority(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        default = 443 if self.scheme == "https" else 80
        return host if self.port == default else f"{host}:{self.port}"


def proxy_for(url: str) -> str | None:
    """The proxy from the environment for ``url``, as ``httpx.Client(trust_env=True)`` finds it."""
    parts = urlsplit(url)
    if urllib.request.proxy_bypass(parts.hostname or ""):
        return None
    proxies = urllib.request.getproxies()
    return proxies.get(parts.scheme) or proxies.get("all")


class _Connection:
    """One socket and the h11 state machine that frames what crosses it."""

    __slots__ = ("end", "h11", "idle_since", "limit", "read_s", "reader", "writer")

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        limit: asyncio.Timeout,
        read_s: float,
        end: float,
    ) -> None:
        self.reader = reader
        self.writer = writer
        self.h11 = h11.Connection(h11.CLIENT)
        self.idle_since = 0.0
        self.arm(limit, read_s, end)

    def arm(self, limit: asyncio.Timeout, read_s: float, end: float) -> None:
        """Bind the exchange's timeout: each wait for bytes may last ``read_s``, never
        past ``end`` (loop time)."""
        self.limit, self.read_s, self.end = limit, read_s, end

    def reusable(self, now: float, expiry_s: float) -> bool:
        if self.h11.our_state is not h11.IDLE or now - self.idle_since >= expiry_s:
            return False
        if self.reader.at_eof() or self.writer.is_closing():
            return False
        # An idle HTTP/1.1 connection has nothing to read: if its socket is readable, the
        # server closed it (or sent a 408 before closing) and the loop has not seen it
        # yet. A request written into it would fail and count as a failed attempt.
        sock = self.writer.get_extra_info("socket")
        if sock is None:
            return True
        readable, _, _ = select.select([sock], [], [], 0)
        return not readable

    async def send(self, *events: h11.Event) -> None:
        self.writer.write(b"".join(self.h11.send(e) or b"" for e in events))
        await self.writer.drain()

    async def next_event(self) -> h11.Event | type[h11.PAUSED]:
        while (event := self.h11.next_event()) is h11.NEED_DATA:
            loop = asyncio.get_running_loop()
            self.limit.reschedule(min(loop.time() + self.read_s, self.end))
            self.h11.receive_data(await self.reader.read(_READ_SIZE))  # b"": EOF
        return cast("h11.Event | type[h11.PAUSED]", event)

    async def response(self) -> Response:
        """The next final response (interim 1xx skipped), its body read in full."""
        while not isinstance(head := await self.next_event(), h11.Response):
            if isinstance(head, h11.ConnectionClosed):
                raise HttpError(
                    "RemoteProtocolError", "the server disconnected without sending a response"
                )
            # An InformationalResponse (100 Continue...): the final one follows.
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in head.headers}
        if self.h11.their_state is h11.SWITCHED_PROTOCOL:  # a CONNECT answered 2xx
            return Response(head.status_code, headers, b"")
        parts: list[bytes] = []
        while not isinstance(event := await self.next_event(), h11.EndOfMessage):
            if isinstance(event, h11.Data):
                parts.append(bytes(event.data))
        body = _decode(b"".join(parts), headers.get("content-encoding"))
        return Response(head.status_code, headers, body)

    def finish(self) -> bool:
        """After a response: True when the connection may carry another request."""
        if self.h11.our_state is h11.DONE and self.h11.their_state is h11.DONE:
            self.h11.start_next_cycle()
            # Bytes nobody asked for: the stream is out of step, do not reuse it.
            return not self.h11.trailing_data[0]
        return False  # MUST_CLOSE: Connection: close, HTTP/1.0 or a close-delimited body

    def close(self) -> None:
        transport = self.writer.transport
        if not transport.is_closing():
            transport.abort()  # no graceful TLS close_notify wait: the exchange is over


class HttpClient:
    """POSTs to one URL over a keep-alive pool; the caller bounds the concurrency."""

    def __init__(
        self,
        url: str,
        *,
        headers: Headers,
        proxy: str | None = None,
        keepalive_expiry_s: float = 4.0,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        parts = urlsplit(url)
        self._origin = _Endpoint.parse(url)
        path = parts.path or "/"
        self._target = f"{path}?{parts.query}" if parts.query else path
        self._proxy: _Endpoint | None = None
        self._forward = False  # an http target through a proxy: absolute-form, no tunnel
        self._proxy_headers: list[tuple[str, str]] = []
        if proxy is not None:
            self._proxy = _Endpoint.parse(proxy)
            proxy_parts = urlsplit(proxy if "://" in proxy else f"http://{proxy}")
            if proxy_parts.username is not None:
                secret = f"{unquote(proxy_parts.username)}:{unquote(proxy_parts.password or '')}"
                token = base64.b64encode(secret.encode()).decode()
                self._proxy_headers.append(("Proxy-Authorization", f"Basic {token}"))
            self._forward = self._origin.scheme == "http"
            if self._forward:
                self._target = f"http://{self._origin.authority}{self._target}"
        self._headers = [("Host", self._origin.authority), *headers]
        if self._forward:
            self._headers += self._proxy_headers
        # h11 refuses a bad name or value here, at start, not on the first escalation.
        h11.Request(method="POST", target=self._target, headers=self._headers)
        self._expiry = keepalive_expiry_s
        self._ssl = ssl_context
        self._idle: list[_Connection] = []
        self._open: set[_Connection] = set()
        self._closed = False

    def _ssl_context(self) -> ssl.SSLContext:
        if self._ssl is None:
            self._ssl = httpx.create_ssl_context()
        return self._ssl

    async def post(self, body: bytes, *, timeouts: Timeouts, deadline: float) -> Response:
        """POST ``body``; ``deadline`` is a ``time.monotonic()`` instant no phase may pass."""
        if self._closed:
            raise HttpError("ConnectError", "the HTTP client is closed")
        loop = asyncio.get_running_loop()
        # Deadlines are time.monotonic() instants; convert once to the loop's clock.
        end = loop.time() + (deadline - time.monotonic())
        conn = self._take_idle()
        phase = "ConnectTimeout"
        try:
            async with asyncio.timeout(None) as limit:
                if conn is None:
                    limit.reschedule(min(loop.time() + timeouts.connect, end))
                    conn = await self._connect(limit, timeouts.connect, end)
                phase = "WriteTimeout"
                limit.reschedule(min(loop.time() + timeouts.write, end))
                headers = [*self._headers, ("Content-Length", str(len(body)))]
                await conn.send(
                    h11.Request(method="POST", target=self._target, headers=headers),
                    h11.Data(data=body),
                    h11.EndOfMessage(),
                )
                phase = "ReadTimeout"
                conn.arm(limit, timeouts.read, end)
                response = await conn.response()
        except TimeoutError as exc:
            self._discard(conn)
            raise HttpError(phase, f"no progress within the {phase} limit") from exc
        except HttpError:
            self._discard(conn)
            raise
        except h11.RemoteProtocolError as exc:
            self._discard(conn)
            raise HttpError("RemoteProtocolError", str(exc)) from exc
        except OSError as exc:  # resets, refusals, TLS failures (ssl.SSLError is an OSError)
            self._discard(conn)
            raise HttpError(_ERROR_OF[phase], str(exc) or type(exc).__name__) from exc
        except BaseException:  # cancelled mid-exchange: the connection is in an unknown state
            self._discard(conn)
            raise
        if conn.finish() and not self._closed:
            conn.idle_since = time.monotonic()
            self._idle.append(conn)
        else:
            self._discard(conn)
        return response

    async def aclose(self) -> None:
        self._closed = True
        for conn in list(self._open):
            conn.close()
        self._open.clear()
        self._idle.clear()

    # -- connections -----------------------------------------------------

    def _take_idle(self) -> _Connection | None:
        now = time.monotonic()
        while self._idle:
            conn = self._idle.pop()  # newest first: the least likely to have expired
            if conn.reusable(now, self._expiry):
                return conn
            self._discard(conn)
        return None

    def _discard(self, conn: _Connection | None) -> None:
        if conn is not None:
            conn.close()
            self._open.discard(conn)

    async def _connect(self, limit: asyncio.Timeout, connect_s: float, end: float) -> _Connection:
        origin, proxy = self._origin, self._proxy
        hop = proxy or origin
        tls = self._ssl_context() if hop.scheme == "https" else None
        reader, writer = await asyncio.open_connection(
            hop.host, hop.port, ssl=tls, server_hostname=hop.host if tls else None
        )
        conn = _Connection(reader, writer, limit, connect_s, end)
        self._open.add(conn)
        if proxy is not None and not self._forward:
            try:
                await self._tunnel(conn)
                await writer.start_tls(self._ssl_context(), server_hostname=origin.host)
            except BaseException:
                self._discard(conn)
                raise
            conn.h11 = h11.Connection(h11.CLIENT)  # the tunnel now carries the origin's HTTP
        return conn

    async def _tunnel(self, conn: _Connection) -> None:
        """``CONNECT host:port`` through the proxy (RFC 9110 §9.3.6)."""
        authority = f"{self._origin.host}:{self._origin.port}"
        headers = [("Host", authority), *self._proxy_headers]
        await conn.send(
            h11.Request(method="CONNECT", target=authority, headers=headers), h11.EndOfMessage()
        )
        response = await conn.response()
        if conn.h11.their_state is not h11.SWITCHED_PROTOCOL:
            raise HttpError("ProxyError", f"the proxy refused CONNECT: HTTP {response.status}")
        if conn.h11.trailing_data[0]:
            raise HttpError("ProxyError", "the proxy sent data before the TLS handshake")


def _decode(body: bytes, coding: str | None) -> bytes:
    """Undo a gzip or deflate ``Content-Encoding`` (we ask for none; a server may still)."""
    name = (coding or "identity").strip().lower()
    try:
        if name in ("gzip", "x-gzip"):
            return zlib.decompress(body, zlib.MAX_WBITS | 16)
        if name == "deflate":  # zlib-wrapped per RFC 9110, raw from some servers
            try:
                return zlib.decompress(body)
            except zlib.error:
                return zlib.decompress(body, -zlib.MAX_WBITS)
    except zlib.error as exc:
        raise HttpError("DecodingError", f"bad {name} body: {exc}") from exc
    return body  # identity, or a coding we cannot undo: the JSON parse will say so
