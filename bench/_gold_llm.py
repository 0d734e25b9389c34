"""A cloud LLM that knows the answers: an OpenAI-compatible ``/chat/completions`` endpoint
that answers a relay's classify prompt with the gold label of the text it carries.

For ``bench/learning.py --real`` only: the learning curve needs a cloud whose labels are
right, so that what the relay learns from is the gold. It reads the text between the
relay's data markers (``cloud_relay/prompting.py``), looks it up (whitespace and case
folded) in a JSON map of text -> label, and answers ``unknown`` for a text it was not given.

    python -m bench._gold_llm --port 8080 --gold gold.json
"""

from __future__ import annotations

import argparse
import json
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any


def key(text: str) -> str:
    return " ".join(text.casefold().split())


def data_text(prompt: str) -> str:
    """The ``text:`` block of the relay's user turn."""
    body = prompt.split("<<<BEGIN_DATA>>>", 1)[-1].split("<<<END_DATA>>>", 1)[0]
    body = body.split("text:\n", 1)[-1]
    return body.split("\n\nsensor readings", 1)[0].strip()


def completion(content: str) -> bytes:
    return json.dumps(
        {
            "id": "chatcmpl-gold",
            "object": "chat.completion",
            "created": 0,
            "model": "gold",
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": content},
                    "finish_reason": "stop",
                }
            ],
            "usage": {"prompt_tokens": 48, "completion_tokens": 2, "total_tokens": 50},
        }
    ).encode()


def serve(port: int, gold: dict[str, str]) -> None:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:
            body: dict[str, Any] = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            users = [m["content"] for m in body.get("messages", []) if m.get("role") == "user"]
            label = gold.get(key(data_text(users[0])) if users else "", "unknown")
            out = completion(label)
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(out)))
            self.end_headers()
            self.wfile.write(out)

        def log_message(self, *_args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    print(f"gold cloud listening on 127.0.0.1:{port}", flush=True)
    server.serve_forever()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench._gold_llm", description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--gold", type=Path, required=True, help="JSON object text -> label")
    args = parser.parse_args(argv)
    gold = {key(t): label for t, label in json.loads(args.gold.read_text()).items()}
    serve(args.port, gold)
    return 0


if __name__ == "__main__":
    sys.exit(main())
