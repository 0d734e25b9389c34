"""``edge-agent serve`` over real HTTP, with the real SmolLM2 build and the official client.

The server runs as a subprocess (``python -m agent.serve``), one per module for
the plain API, and its own for the API key, the wait queue and disconnects.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from openai import OpenAI

from agent.models import DEFAULT_MODEL

MODEL = DEFAULT_MODEL
COUNT = [{"role": "user", "content": "Count from 1 to 30, one number per line."}]
LONG = [
    {"role": "user", "content": "Write the numbers from 1 to 500 separated by commas."}
]  # 1500+ tokens


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class Server:
    def __init__(self, log_path: Path, *flags: str, env: dict[str, str] | None = None) -> None:
        self.port = _free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        self._log = log_path.open("wb")
        argv = [sys.executable, "-m", "agent.serve", "--model", MODEL, "--port", str(self.port)]
        self.proc = subprocess.Popen(
            [*argv, "--log-format", "json", *flags],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, log_path.read_text()
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.base}/health", timeout=1).status_code == 200:
                    return
            time.sleep(0.1)
        self.stop()
        raise AssertionError(f"server did not come up:\n{log_path.read_text()}")

    def client(self, api_key: str = "unused", **kw: Any) -> OpenAI:
        return OpenAI(base_url=f"{self.base}/v1", api_key=api_key, max_retries=0, **kw)

    def health(self) -> dict[str, Any]:
        body: dict[str, Any] = httpx.get(f"{self.base}/health", timeout=5).json()
        return body

    def events(self, name: str) -> list[dict[str, Any]]:
        lines = self.log_path.read_text().splitlines()
        parsed = [json.loads(line) for line in lines if line.startswith("{")]
        return [e for e in parsed if e.get("event") == name]

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        return self.proc.returncode


@pytest.fixture(scope="module")
def server(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    s = Server(tmp_path_factory.mktemp("serve") / "serve.log", "--max-tokens-cap", "256")
    yield s
    assert s.stop() == 0, "SIGTERM must shut the server down cleanly"


@pytest.fixture(scope="module")
def client(server: Server) -> OpenAI:
    return server.client()


def _stream(client: OpenAI, **kw: Any) -> tuple[str, list[Any]]:
    chunks = list(client.chat.completions.create(model=MODEL, stream=True, **kw))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    return text, chunks


def test_models_list(client: OpenAI) -> None:
    models = client.models.list()
    assert [m.id for m in models.data] == [MODEL]
    assert models.data[0].object == "model"
    assert client.models.retrieve(MODEL).id == MODEL
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("gpt-4o")


def test_completion_counts_and_confidence(client: OpenAI, model_dir: Path) -> None:
    import onnxruntime_genai as og

    reply = client.chat.completions.create(model=MODEL, messages=COUNT, max_tokens=40)
    choice = reply.choices[0]
    assert reply.object == "chat.completion"
    assert choice.message.role == "assistant"
    assert choice.message.content
    assert choice.finish_reason in ("stop", "length")
    usage = reply.usage
    assert usage is not None
    # The prompt count is checked against an independent tokenization of the chat.
    tok = og.Tokenizer(og.Model(str(model_dir)))
    prompt = tok.apply_chat_template(json.dumps(COUNT), add_generation_prompt=True)
    assert usage.prompt_tokens == len(tok.encode(prompt))
    assert 0 < usage.completion_tokens <= 40
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    assert len(tok.encode(choice.message.content)) == pytest.approx(usage.completion_tokens, abs=2)
    extra = reply.model_extra or {}
    assert 0.0 < extra["x_confidence"] <= 1.0


def test_streaming_matches_non_streaming(client: OpenAI) -> None:
    plain = client.chat.completions.create(model=MODEL, messages=COUNT, max_tokens=48)
    text, chunks = _stream(
        client, messages=COUNT, max_tokens=48, stream_options={"include_usage": True}
    )
    assert text == plain.choices[0].message.content
    assert chunks[0].choices[0].delta.role == "assistant"
    with_choices = [c for c in chunks if c.choices]
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    assert all(c.id == chunks[0].id for c in chunks)
    assert [c.choices[0].finish_reason for c in with_choices[:-1]] == [None] * (
        len(with_choices) - 1
    )
    assert with_choices[-1].choices[0].finish_reason == plain.choices[0].finish_reason
    assert (with_choices[-1].model_extra or {})["x_confidence"] == pytest.approx(
        (plain.model_extra or {})["x_confidence"]
    )
    assert chunks[-1].choices == []
    assert chunks[-1].usage == plain.usage


def test_logprobs_with_top_alternatives(client: OpenAI) -> None:
    reply = client.chat.completions.create(
        model=MODEL, messages=COUNT, max_tokens=24, logprobs=True, top_logprobs=3
    )
    choice = reply.choices[0]
    assert choice.logprobs is not None
    entries = choice.logprobs.content
    assert entries is not None
    assert reply.usage is not None
    assert len(entries) == reply.usage.completion_tokens
    assert "".join(e.token for e in entries) == choice.message.content  # ASCII reply
    for e in entries:
        assert e.logprob <= 0.0
        assert e.bytes == list(e.token.encode())
        tops = [t.logprob for t in e.top_logprobs]
        assert len(tops) == 3
        assert tops == sorted(tops, reverse=True)
        assert all(t <= 0.0 for t in tops)
        assert e.token in [t.token for t in e.top_logprobs] or e.logprob <= min(tops)
        # Decoding is greedy: the chosen token is the most likely one.
        assert e.logprob == pytest.approx(tops[0], abs=1e-6)


_POEM = [{"role": "user", "content": "Write a short poem about the sea."}]


def test_a_temperature_samples_and_a_seed_repeats_it(client: OpenAI) -> None:
    def text(**kw: Any) -> str:
        reply = client.chat.completions.create(model=MODEL, messages=_POEM, max_tokens=24, **kw)  # type: ignore[arg-type]
        return reply.choices[0].message.content or ""

    greedy = text()
    assert text(temperature=0) == greedy
    sampled = {seed: text(temperature=1.2, top_p=0.95, seed=seed) for seed in range(4)}
    assert text(temperature=1.2, top_p=0.95, seed=2) == sampled[2]
    # 24 tokens drawn at 1.2: four seeds giving one text would mean no sampling.
    assert len({greedy, *sampled.values()}) > 2, sampled


def test_stop_sequences_cut_the_text(client: OpenAI) -> None:
    full = client.chat.completions.create(model=MODEL, messages=COUNT, max_tokens=60)
    content = full.choices[0].message.content or ""
    assert len(content) > 20, content
    stop = content[len(content) // 2 : len(content) // 2 + 3]
    expected = content[: content.index(stop)]
    cut = client.chat.completions.create(
        model=MODEL, messages=COUNT, max_tokens=60, stop=["never-appears", stop]
    )
    assert cut.choices[0].message.content == expected
    assert cut.choices[0].finish_reason == "stop"
    assert cut.usage is not None
    assert full.usage is not None
    assert cut.usage.completion_tokens < full.usage.completion_tokens
    streamed, chunks = _stream(client, messages=COUNT, max_tokens=60, stop=stop)
    assert streamed == expected
    assert chunks[-1].choices[0].finish_reason == "stop"


@pytest.mark.parametrize("field", ["max_tokens", "max_completion_tokens"])
def test_max_tokens_gives_length(client: OpenAI, field: str) -> None:
    reply = client.chat.completions.create(model=MODEL, messages=COUNT, **{field: 5})  # type: ignore[call-overload]
    assert reply.choices[0].finish_reason == "length"
    assert reply.usage is not None
    assert reply.usage.completion_tokens == 5


def test_max_tokens_is_capped(client: OpenAI) -> None:
    reply = client.chat.completions.create(model=MODEL, messages=LONG, max_tokens=5000)
    assert reply.usage is not None
    assert reply.usage.completion_tokens == 256  # the server's --max-tokens-cap
    assert reply.choices[0].finish_reason == "length"


def _error(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    error: dict[str, Any] = response.json()["error"]
    assert error["code"] == code
    assert error["message"]
    assert error["type"]
    return error


def test_bad_requests_are_400_with_error_body(server: Server, client: OpenAI) -> None:
    url = f"{server.base}/v1/chat/completions"
    _error(httpx.post(url, content=b"{not json", timeout=10), 400, "invalid_json")
    _error(httpx.post(url, json=[1, 2], timeout=10), 400, "invalid_json")
    user = [{"role": "user", "content": "hi"}]
    for body in (
        {"model": MODEL},
        {"model": MODEL, "messages": []},
        {"model": MODEL, "messages": [{"role": "robot", "content": "hi"}]},
        {"model": MODEL, "messages": user, "n": 2},
        {"model": MODEL, "messages": user, "max_tokens": 0},
        {"model": MODEL, "messages": user, "top_logprobs": 2},
        {"model": MODEL, "messages": user, "stop": ["a", "b", "c", "d", "e"]},
        {"model": MODEL, "messages": [{"role": "user", "content": [{"type": "image_url"}]}]},
    ):
        _error(httpx.post(url, json=body, timeout=10), 400, "invalid_value")
    with pytest.raises(openai.BadRequestError) as exc:
        client.chat.completions.create(model=MODEL, messages=COUNT, n=2)
    assert exc.value.status_code == 400
    with pytest.raises(openai.NotFoundError) as missing:
        client.chat.completions.create(model="gpt-4o", messages=COUNT)
    assert missing.value.code == "model_not_found"
    too_long = [{"role": "user", "content": "word " * 8000}]
    body = {"model": MODEL, "messages": too_long, "max_tokens": 200}
    _error(httpx.post(url, json=body, timeout=30), 400, "context_length_exceeded")
    _error(httpx.get(f"{server.base}/v1/nothing", timeout=5), 404, "not_found")


def test_list_content_parts_and_developer_role(client: OpenAI) -> None:
    parts = [
        {"role": "developer", "content": "Answer briefly."},
        {"role": "user", "content": [{"type": "text", "text": "Count from 1 to 30, "},
                                     {"type": "text", "text": "one number per line."}]},
    ]  # fmt: skip
    plain = [{"role": "system", "content": "Answer briefly."}, COUNT[0]]
    a = client.chat.completions.create(model=MODEL, messages=parts, max_tokens=12)  # type: ignore[arg-type]
    b = client.chat.completions.create(model=MODEL, messages=plain, max_tokens=12)  # type: ignore[arg-type]
    assert a.choices[0].message.content == b.choices[0].message.content


def test_api_key_is_enforced(model_dir: Path, tmp_path: Path) -> None:
    s = Server(tmp_path / "serve.log", env={"EDGE_AGENT_SERVE_API_KEY": "s3cret"})
    try:
        with pytest.raises(openai.AuthenticationError) as exc:
            s.client("wrong").models.list()
        assert exc.value.status_code == 401
        assert exc.value.code == "invalid_api_key"
        r = httpx.post(f"{s.base}/v1/chat/completions", json={"model": MODEL}, timeout=5)
        _error(r, 401, "invalid_api_key")  # the key is checked before the body
        reply = s.client("s3cret").chat.completions.create(
            model=MODEL, messages=COUNT, max_tokens=3
        )
        assert reply.choices[0].message.content
        assert s.health()["status"] == "ok"  # health needs no key
        assert "s3cret" not in s.log_path.read_text()
    finally:
        assert s.stop() == 0


def _wait_for(predicate: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.02)


def test_busy_gives_429_with_retry_after(model_dir: Path, tmp_path: Path) -> None:
    s = Server(tmp_path / "serve.log", "--queue-size", "1", "--max-tokens-cap", "1000")
    try:
        running = s.client().chat.completions.create(
            model=MODEL, messages=LONG, max_tokens=1000, stream=True
        )
        next(iter(running))  # the role chunk: the first request owns the engine
        waited: list[Any] = []
        waiter = threading.Thread(
            target=lambda: waited.append(
                s.client().chat.completions.create(model=MODEL, messages=COUNT, max_tokens=4)
            )
        )
        waiter.start()
        _wait_for(lambda: s.health()["in_flight"] == 2)
        body = {"model": MODEL, "messages": COUNT, "max_tokens": 4}
        r = httpx.post(f"{s.base}/v1/chat/completions", json=body, timeout=10)
        _error(r, 429, "server_busy")
        assert int(r.headers["Retry-After"]) >= 1
        with pytest.raises(openai.RateLimitError):
            s.client().chat.completions.create(model=MODEL, messages=COUNT, max_tokens=4)
        running.close()  # hang up: generation stops and the waiting request runs
        waiter.join(30)
        assert waited
        assert waited[0].choices[0].finish_reason == "length"
    finally:
        assert s.stop() == 0


@pytest.mark.parametrize("stream", [True, False])
def test_disconnect_stops_generation(model_dir: Path, tmp_path: Path, stream: bool) -> None:
    s = Server(tmp_path / "serve.log", "--max-tokens-cap", "2000")
    try:
        body = {"model": MODEL, "messages": LONG, "max_tokens": 2000, "stream": stream}
        url = f"{s.base}/v1/chat/completions"
        if stream:
            with httpx.stream("POST", url, json=body, timeout=30) as r:
                lines = r.iter_lines()
                assert next(lines).startswith("data: ")
        else:
            with pytest.raises(httpx.ReadTimeout):
                httpx.post(url, json=body, timeout=1.0)
        # 2000 tokens would take far longer than this at any speed this machine has.
        _wait_for(lambda: s.health()["in_flight"] == 0, timeout=5)
        _wait_for(lambda: bool(s.events("chat_completion")), timeout=5)
        [event] = s.events("chat_completion")
        assert event["status"] == 499
        assert event["completion_tokens"] < 2000
    finally:
        assert s.stop() == 0


# -- structured outputs (#17) ---------------------------------------------------

_ROOM = {
    "type": "object",
    "properties": {"room": {"type": "string"}, "celsius": {"type": "number"}},
    "required": ["room", "celsius"],
    "additionalProperties": False,
}
_TOOLS: list[Any] = [
    {
        "type": "function",
        "function": {
            "name": "set_temperature",
            "description": "Set a thermostat",
            "parameters": _ROOM,
        },
    },
    {
        "type": "function",
        "function": {
            "name": "set_lights",
            "description": "Lights on or off",
            "parameters": {
                "type": "object",
                "properties": {"room": {"type": "string"}, "on": {"type": "boolean"}},
                "required": ["room", "on"],
                "additionalProperties": False,
            },
        },
    },
]
_SET = [{"role": "user", "content": "Set the bedroom to 21 degrees."}]


def test_response_format_json_schema_is_valid_json(client: OpenAI) -> None:
    import jsonschema

    reply = client.chat.completions.create(
        model=MODEL,
        messages=_SET,  # type: ignore[arg-type]
        max_tokens=48,
        response_format={
            "type": "json_schema",
            "json_schema": {"name": "room", "schema": _ROOM, "strict": True},
        },
    )
    content = reply.choices[0].message.content or ""
    if reply.choices[0].finish_reason == "stop":
        value = json.loads(content)
        jsonschema.validate(value, _ROOM)
        assert content == json.dumps(value, separators=(",", ":"), ensure_ascii=False)  # compact
    assert 0.0 <= reply.model_extra["x_confidence"] <= 1.0  # type: ignore[index]


def test_tools_required_give_a_valid_tool_call(client: OpenAI) -> None:
    import jsonschema

    reply = client.chat.completions.create(
        model=MODEL,
        messages=_SET,  # type: ignore[arg-type]
        max_tokens=48,
        tools=_TOOLS,
        tool_choice="required",
    )
    choice = reply.choices[0]
    assert choice.finish_reason == "tool_calls"
    (call,) = choice.message.tool_calls or []
    params = {t["function"]["name"]: t["function"]["parameters"] for t in _TOOLS}
    jsonschema.validate(json.loads(call.function.arguments), params[call.function.name])  # type: ignore[union-attr]


#: ``_ROOM`` with every value bounded, so the grammar closes the object within the
#: reply's tokens whatever is drawn: an unbounded number or string let a 135M sampled at
#: 1.5 write digits until ``max_tokens`` (finish ``length``), depending on the draws.
_ROOM_BOUNDED = {
    **_ROOM,
    "properties": {
        "room": {"type": "string", "maxLength": 24},
        "celsius": {"type": "integer", "minimum": -40, "maximum": 60},
    },
}


def test_a_sampled_structured_reply_still_fits_its_schema(client: OpenAI) -> None:
    import jsonschema

    texts = set()
    for seed in range(3):
        reply = client.chat.completions.create(
            model=MODEL,
            messages=_SET,  # type: ignore[arg-type]
            max_tokens=128,
            temperature=1.5,
            seed=seed,
            response_format={
                "type": "json_schema",
                "json_schema": {"name": "room", "schema": _ROOM_BOUNDED, "strict": True},
            },
        )
        content = reply.choices[0].message.content or ""
        assert reply.choices[0].finish_reason == "stop", content
        jsonschema.validate(json.loads(content), _ROOM_BOUNDED)
        texts.add(content)
    assert len(texts) > 1, texts


def test_unsupported_schema_and_streamed_tools_are_400(client: OpenAI) -> None:
    bad = {"type": "object", "properties": {"a": {"type": "string", "pattern": "x"}}}
    with pytest.raises(openai.BadRequestError, match="unsupported_schema"):
        client.chat.completions.create(
            model=MODEL,
            messages=_SET,  # type: ignore[arg-type]
            response_format={"type": "json_schema", "json_schema": {"name": "a", "schema": bad}},
        )
    with pytest.raises(openai.BadRequestError, match="stream=false"):
        client.chat.completions.create(
            model=MODEL,
            messages=_SET,  # type: ignore[arg-type]
            tools=_TOOLS,
            stream=True,
        )
