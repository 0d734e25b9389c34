"""An instant OpenAI-compatible ``/chat/completions`` endpoint, for relay throughput only.

A bench stub, not a fake of the main path: raw asyncio HTTP/1.1 with keep-alive that
answers every POST with one fixed completion, so the relay's own cost is what a
throughput run measures. It times its own work per request (from the end of the
request head to the response handed to the socket) and serves those figures on
``GET /stats`` (``GET /stats?reset=1`` also clears them), so a run can subtract the
stub's service time from the relay's latency.

    python -m bench._stub_llm --port 8080
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import socket
import sys
import time

from bench._common import percentile

COMPLETION = json.dumps(
    {
        "id": "chatcmpl-bench",
        "object": "chat.completion",
        "created": 0,
        "model": "bench-stub",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "Water boils at 100 degrees Celsius."},
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 48, "completion_tokens": 8, "total_tokens": 56},
    }
).encode()


def _response(body: bytes) -> bytes:
    head = (
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nConnection: keep-alive\r\n\r\n"
    )
    return head.encode() + body


class Stub:
    def __init__(self) -> None:
        self.service_s: list[float] = []
        self._completion = _response(COMPLETION)

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        sock = writer.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                start = time.perf_counter()
                length = 0
                for line in head.split(b"\r\n")[1:]:
                    if line[:15].lower() == b"content-length:":
                        length = int(line[15:])
                if length:
                    await reader.readexactly(length)
                if head.startswith(b"GET /stats"):
                    stats = self._stats(reset=b"reset=1" in head.split(b"\r\n", 1)[0])
                    writer.write(_response(json.dumps(stats).encode()))
                else:
                    writer.write(self._completion)
                    self.service_s.append(time.perf_counter() - start)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    def _stats(self, *, reset: bool) -> dict[str, float]:
        ms = [s * 1000 for s in self.service_s]
        out = {
            "requests": len(ms),
            "service_p50_ms": percentile(ms, 50),
            "service_p99_ms": percentile(ms, 99),
        }
        if reset:
            self.service_s = []
        return out


async def serve(port: int) -> None:
    stub = Stub()
    server = await asyncio.start_server(stub.handle, "127.0.0.1", port, backlog=1024)
    print(f"stub listening on 127.0.0.1:{port}", flush=True)
    async with server:
        await server.serve_forever()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench._stub_llm", description=__doc__)
    parser.add_argument("--port", type=int, required=True, help="port on 127.0.0.1")
    args = parser.parse_args(argv)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(args.port))
    return 0


if __name__ == "__main__":
    sys.exit(main())
