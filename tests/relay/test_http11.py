"""The relay's HTTP/1.1 client (h11 over asyncio) against byte-exact servers and proxies.

The malformed cases check that h11's protocol errors surface as ``RemoteProtocolError``
and that the broken connection is never reused."""

from __future__ import annotations

import base64
import gzip
import json
import ssl
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from cloud_relay.http11 import HttpClient, HttpError, Response, Timeouts
from cloud_relay.pki import CertKind, Pki
from tests.relay.aio import LoopRunner
from tests.relay.rawserver import ConnectProxy, RawServer, Reply, framed, ok_body

BODY = b'{"model":"m","messages":[]}'
FAST = Timeouts(connect=1.0, write=1.0, read=1.0)


@pytest.fixture
def runner() -> Iterator[LoopRunner]:
    r = LoopRunner()
    yield r
    r.close()


def _post(
    runner: LoopRunner,
    client: HttpClient,
    *,
    timeouts: Timeouts = FAST,
    within_s: float = 5.0,
) -> Response:
    return runner.run(client.post(BODY, timeouts=timeouts, deadline=time.monotonic() + within_s))


def _client(url: str, **kw: object) -> HttpClient:
    return HttpClient(url, headers=[("Content-Type", "application/json")], **kw)  # type: ignore[arg-type]


def test_keep_alive_reuses_one_connection_and_sends_a_plain_post(runner: LoopRunner) -> None:
    with RawServer().running() as server:
        client = _client(server.url)
        for _ in range(3):
            resp = _post(runner, client)
            assert resp.status == 200
            assert json.loads(resp.body)["choices"][0]["message"]["content"] == "ok"
        assert server.connections == 1
        head, _, body = server.requests[0].partition(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        assert lines[0] == b"POST /v1/chat/completions HTTP/1.1"
        assert f"Host: 127.0.0.1:{server.port}".encode() in lines
        assert f"Content-Length: {len(BODY)}".encode() in lines
        assert body == BODY
        runner.run(client.aclose())


def test_chunked_body_with_extensions_and_trailers(runner: LoopRunner) -> None:
    payload = ok_body("chunked")
    a, b = payload[:10], payload[10:]
    chunked = (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
        + f"{len(a):x};ext=1\r\n".encode()
        + a
        + b"\r\n"
        + f"{len(b):X}\r\n".encode()
        + b
        + b"\r\n0\r\nX-Trailer: yes\r\n\r\n"
    )
    with RawServer([Reply(chunked)]).running() as server:
        client = _client(server.url)
        assert _post(runner, client).body == payload
        assert _post(runner, client).status == 200
        assert server.connections == 1  # chunked framing leaves the connection reusable


def test_close_delimited_body_then_a_fresh_connection(runner: LoopRunner) -> None:
    payload = ok_body("till close")
    reply = Reply(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n" + payload, close=True)
    with RawServer([reply]).running() as server:
        client = _client(server.url)
        assert _post(runner, client).body == payload
        assert _post(runner, client).status == 200
        assert server.connections == 2


def test_http10_answer_and_stray_bytes_retire_the_connection(runner: LoopRunner) -> None:
    old = framed(ok_body("old")).replace(b"HTTP/1.1", b"HTTP/1.0", 1)
    stray = framed(ok_body("stray")) + b"HTTP/1.1 200 OK\r\n"  # more than was asked for
    with RawServer([Reply(old), Reply(stray)]).running() as server:
        client = _client(server.url)
        assert json.loads(_post(runner, client).body)["choices"][0]["message"]["content"] == "old"
        assert _post(runner, client).status == 200  # new connection: HTTP/1.0 is not kept
        assert _post(runner, client).status == 200  # new again: the stray bytes retired it
        assert server.connections == 3


def test_interim_100_is_skipped_and_gzip_is_decoded(runner: LoopRunner) -> None:
    payload = ok_body("zipped")
    packed = gzip.compress(payload)
    data = b"HTTP/1.1 100 Continue\r\n\r\n" + framed(packed, "Content-Encoding: gzip")
    with RawServer([Reply(data)]).running() as server:
        assert _post(runner, _client(server.url)).body == payload


def test_idle_connection_closed_by_the_server_is_not_reused(runner: LoopRunner) -> None:
    # The server closes after answering but never said so: the next request must not be
    # written into the dead connection (it would fail and count as an attempt).
    with RawServer([Reply(framed(ok_body()), close=True)]).running() as server:
        client = _client(server.url)
        assert _post(runner, client).status == 200
        time.sleep(0.1)  # the FIN arrives while the loop is not running
        assert _post(runner, client).status == 200
        assert server.connections == 2


def test_idle_connections_expire(runner: LoopRunner) -> None:
    with RawServer().running() as server:
        client = HttpClient(server.url, headers=[], keepalive_expiry_s=0.1)
        _post(runner, client)
        time.sleep(0.2)
        _post(runner, client)
        assert server.connections == 2


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"HTTP/2 200 OK\r\n\r\n", "illegal status line"),
        (b"HTTP/1.1 20 OK\r\n\r\n", "illegal status line"),
        (b"HTTP/1.1 200 OK\r\n folded: header\r\n\r\n", "continuation line"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n", "conflicting"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n", "bad Content-Length"),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", "illegal chunk header"),
    ],
)
def test_malformed_responses_are_protocol_errors(
    runner: LoopRunner, data: bytes, message: str
) -> None:
    with RawServer([Reply(data, close=True)]).running() as server:
        client = _client(server.url)
        with pytest.raises(HttpError) as info:
            _post(runner, client)
        assert info.value.kind == "RemoteProtocolError"
        assert message in str(info.value)
        assert _post(runner, client).status == 200  # a fresh connection works


def test_body_cut_short_is_a_protocol_error(runner: LoopRunner) -> None:
    cut = framed(ok_body())[:-10]
    with RawServer([Reply(cut, close=True)]).running() as server:
        with pytest.raises(HttpError) as info:
            _post(runner, _client(server.url))
        assert info.value.kind == "RemoteProtocolError"
        assert "without sending complete message body" in str(info.value)


def test_silence_past_the_read_timeout(runner: LoopRunner) -> None:
    with RawServer([Reply(framed(ok_body()), delay_s=1.0)]).running() as server:
        started = time.monotonic()
        with pytest.raises(HttpError) as info:
            _post(runner, _client(server.url), timeouts=Timeouts(1.0, 1.0, 0.2))
        assert info.value.kind == "ReadTimeout"
        assert info.value.timeout
        assert 0.2 <= time.monotonic() - started < 0.8


def test_the_deadline_caps_the_read_timeout(runner: LoopRunner) -> None:
    with RawServer([Reply(framed(ok_body()), delay_s=2.0)]).running() as server:
        started = time.monotonic()
        with pytest.raises(HttpError) as info:
            _post(runner, _client(server.url), timeouts=Timeouts(5, 5, 30), within_s=0.3)
        assert info.value.kind == "ReadTimeout"
        assert time.monotonic() - started < 1.0


def test_connection_refused_is_a_connect_error(runner: LoopRunner) -> None:
    server = RawServer()
    url = server.url
    server._sock.close()  # bound, now closed: nothing listens
    with pytest.raises(HttpError) as info:
        _post(runner, _client(url))
    assert info.value.kind == "ConnectError"
    assert not info.value.timeout


def test_http_target_through_a_forwarding_proxy(runner: LoopRunner) -> None:
    with RawServer().running() as proxy:
        client = _client(
            "http://llm.internal:8080/v1/chat/completions",
            proxy=f"http://user:p%40ss@127.0.0.1:{proxy.port}",
        )
        assert _post(runner, client).status == 200
        head = proxy.requests[0].split(b"\r\n\r\n")[0].split(b"\r\n")
        assert head[0] == b"POST http://llm.internal:8080/v1/chat/completions HTTP/1.1"
        assert b"Host: llm.internal:8080" in head
        token = base64.b64encode(b"user:p@ss").decode()
        assert f"Proxy-Authorization: Basic {token}".encode() in head


@dataclass(frozen=True)
class Tls:
    ca: Path  # the CA certificate that signed the server's
    server: ssl.SSLContext  # the origin's context, for ``localhost``


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> Tls:
    pki = Pki(tmp_path_factory.mktemp("pki"))
    pki.init_ca("http11 test CA")
    row = pki.issue(CertKind.SERVER, "localhost", san=["localhost", "127.0.0.1"])
    assert row.key is not None
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server.load_cert_chain(pki.dir / row.cert, pki.dir / row.key)
    return Tls(pki.ca_cert_path, server)


def test_https_target_through_a_connect_tunnel(runner: LoopRunner, tls: Tls) -> None:
    trust = ssl.create_default_context(cafile=str(tls.ca))
    with RawServer(tls=tls.server).running() as origin, ConnectProxy().running() as proxy:
        client = _client(origin.url, proxy=f"http://u:pw@127.0.0.1:{proxy.port}", ssl_context=trust)
        assert _post(runner, client).status == 200
        assert _post(runner, client).status == 200
        assert origin.connections == 1  # the tunnel is kept alive like any connection
        connect = proxy.requests[0].split(b"\r\n")
        assert connect[0] == f"CONNECT localhost:{origin.port} HTTP/1.1".encode()
        token = base64.b64encode(b"u:pw").decode()
        assert f"Proxy-Authorization: Basic {token}".encode() in connect
        # The origin saw a normal request, not the proxy's credentials.
        assert b"Proxy-Authorization" not in origin.requests[0]
        assert origin.requests[0].startswith(b"POST /v1/chat/completions HTTP/1.1\r\n")


def test_https_direct_checks_the_certificate(runner: LoopRunner, tls: Tls) -> None:
    with RawServer(tls=tls.server).running() as origin:
        with pytest.raises(HttpError) as info:  # the default trust store lacks our CA
            _post(runner, _client(origin.url))
        assert info.value.kind == "ConnectError"
        assert "CERTIFICATE_VERIFY_FAILED" in str(info.value)


def test_a_proxy_refusing_connect_is_a_proxy_error(runner: LoopRunner) -> None:
    with ConnectProxy(refuse="407 Proxy Authentication Required").running() as proxy:
        client = _client("https://localhost:1/v1", proxy=f"http://127.0.0.1:{proxy.port}")
        with pytest.raises(HttpError) as info:
            _post(runner, client)
        assert info.value.kind == "ProxyError"
        assert "407" in str(info.value)
