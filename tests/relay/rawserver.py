"""Byte-exact HTTP peers on loopback for the relay's HTTP client: an origin, a CONNECT proxy.

:class:`RawServer` answers each request (head + ``Content-Length`` body) with the
next scripted :class:`Reply`, sent verbatim, so a test controls framing down to
the byte. It counts connections and keeps every raw request. With ``tls`` it
serves over TLS. :class:`ConnectProxy` answers ``CONNECT host:port`` with 200 and
pipes bytes both ways (or refuses with a given status).
"""

from __future__ import annotations

import json
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from tests.relay.faultserver import completion


def ok_body(content: str = "ok") -> bytes:
    return json.dumps(completion(content)).encode()


def framed(body: bytes, *head: str, status: str = "200 OK") -> bytes:
    """A response with a ``Content-Length`` (and any extra header lines)."""
    lines = [f"HTTP/1.1 {status}", f"Content-Length: {len(body)}", *head]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


@dataclass
class Reply:
    data: bytes
    close: bool = False  # close the connection after sending
    delay_s: float = 0.0  # wait before sending


def _read_request(conn: socket.socket, buf: bytearray) -> bytes | None:
    while b"\r\n\r\n" not in buf:
        chunk = conn.recv(65536)
        if not chunk:
            return None
        buf += chunk
    end = buf.index(b"\r\n\r\n") + 4
    head = bytes(buf[:end])
    length = 0
    for line in head.split(b"\r\n")[1:]:
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":", 1)[1])
    while len(buf) < end + length:
        chunk = conn.recv(65536)
        if not chunk:
            return None
        buf += chunk
    request = bytes(buf[: end + length])
    del buf[: end + length]
    return request


class RawServer:
    def __init__(self, replies: list[Reply] | None = None, *, tls: ssl.SSLContext | None = None):
        self.replies = list(replies or [])
        self.default = Reply(framed(ok_body()))
        self.requests: list[bytes] = []
        self.connections = 0
        self._tls = tls
        self._lock = threading.Lock()
        self._sock = socket.create_server(("127.0.0.1", 0))
        self.port = self._sock.getsockname()[1]
        self._stop = False

    @property
    def url(self) -> str:
        scheme = "https" if self._tls else "http"
        host = "localhost" if self._tls else "127.0.0.1"
        return f"{scheme}://{host}:{self.port}/v1/chat/completions"

    def _accept_loop(self) -> None:
        while not self._stop:
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, raw: socket.socket) -> None:
        with self._lock:
            self.connections += 1
        conn: Any = raw
        try:
            if self._tls is not None:
                conn = self._tls.wrap_socket(raw, server_side=True)
            buf = bytearray()
            while (request := _read_request(conn, buf)) is not None:
                with self._lock:
                    self.requests.append(request)
                    reply = self.replies.pop(0) if self.replies else self.default
                if reply.delay_s:
                    time.sleep(reply.delay_s)
                conn.sendall(reply.data)
                if reply.close:
                    return
        except (OSError, ssl.SSLError):
            return
        finally:
            conn.close()

    @contextmanager
    def running(self) -> Iterator[RawServer]:
        thread = threading.Thread(target=self._accept_loop, daemon=True)
        thread.start()
        try:
            yield self
        finally:
            self._stop = True
            self._sock.close()


class ConnectProxy:
    """An HTTP ``CONNECT`` proxy: 200 and a byte pipe to the target, or ``refuse``."""

    def __init__(self, refuse: str | None = None) -> None:
        self.requests: list[bytes] = []
        self._refuse = refuse
        self._sock = socket.create_server(("127.0.0.1", 0))
        self.port = self._sock.getsockname()[1]

    def _accept_loop(self) -> None:
        while True:
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        buf = bytearray()
        with client:
            request = _read_request(client, buf)
            if request is None:
                return
            self.requests.append(request)
            if self._refuse is not None:
                client.sendall(f"HTTP/1.1 {self._refuse}\r\nContent-Length: 0\r\n\r\n".encode())
                return
            host, port = request.split(b" ")[1].decode().rsplit(":", 1)
            with socket.create_connection((host, int(port))) as upstream:
                client.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
                pump = threading.Thread(target=_pipe, args=(upstream, client), daemon=True)
                pump.start()
                _pipe(client, upstream)
                pump.join(2)

    @contextmanager
    def running(self) -> Iterator[ConnectProxy]:
        threading.Thread(target=self._accept_loop, daemon=True).start()
        try:
            yield self
        finally:
            self._sock.close()


def _pipe(src: socket.socket, dst: socket.socket) -> None:
    try:
        while data := src.recv(65536):
            dst.sendall(data)
        dst.shutdown(socket.SHUT_WR)
    except OSError:
        pass
