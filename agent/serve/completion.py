"""One chat completion: engine events in, OpenAI content, logprobs and usage out.

Streaming and non-streaming replies are built by the same :class:`Collector`
from the same events, so for one greedy request the streamed deltas always
concatenate to the non-streamed content.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from agent.engine.confidence import text_confidence
from agent.engine.engine import Prefilled, StreamEnd, StreamEvent, TokenEvent
from agent.serve.schemas import FinishReason, TokenLogprob, TopLogprob
from agent.serve.stops import StopMatcher


def _utf8(text: str) -> list[int]:
    return list(text.encode("utf-8"))


def token_logprob(event: TokenEvent) -> TokenLogprob:
    """OpenAI's entry for one token (the engine ran with ``logprobs=True``).

    A token holding part of a multi-byte character decodes to U+FFFD on its own;
    its ``bytes`` are then those of U+FFFD, not the raw fragment.
    """
    text = event.token if event.token is not None else event.text
    return TokenLogprob(
        token=text,
        logprob=event.logprob,
        bytes=_utf8(text),
        top_logprobs=[
            TopLogprob(token=t.text, logprob=t.logprob, bytes=_utf8(t.text)) for t in event.top
        ],
    )


@dataclass(frozen=True, slots=True)
class Released:
    """What a client may be shown after one event: new text and its tokens."""

    text: str
    tokens: list[TokenEvent]


@dataclass
class _Pending:
    event: TokenEvent
    start: int  # offset of the token's first character in the generated text


@dataclass
class Collector:
    """Applies stop sequences and keeps counts for one completion.

    A token's logprob entry is released with the text it starts, so a token
    inside a cut-off stop sequence gets no entry, and held-back text holds back
    its entries too.
    """

    stops: list[str]
    prompt_tokens: int = 0
    completion_tokens: int = 0  # every generated token, including cut-off ones
    finish_reason: FinishReason | None = None
    kept: list[TokenEvent] = field(default_factory=list)
    _matcher: StopMatcher = field(init=False)
    _pending: deque[_Pending] = field(default_factory=deque)

    def __post_init__(self) -> None:
        self._matcher = StopMatcher(self.stops)

    @property
    def done(self) -> bool:
        return self.finish_reason is not None

    @property
    def confidence(self) -> float:
        """The engine's confidence in the tokens the client gets."""
        return text_confidence([t.stat() for t in self.kept])

    def feed(self, event: StreamEvent) -> Released:
        if self.done:
            return Released("", [])
        if isinstance(event, Prefilled):
            self.prompt_tokens = event.prompt_tokens
            return Released("", [])
        if isinstance(event, StreamEnd):
            self.finish_reason = event.finish_reason
            return self._release(self._matcher.flush(), everything=True)
        self.completion_tokens += 1
        self._pending.append(_Pending(event, len(self._matcher.text)))
        text = self._matcher.push(event.text)
        if self._matcher.stopped:
            self.finish_reason = "stop"
        return self._release(text, everything=False)

    def _release(self, text: str, *, everything: bool) -> Released:
        upto = self._matcher.released
        out: list[TokenEvent] = []
        while self._pending and (everything or self._pending[0].start < upto):
            out.append(self._pending.popleft().event)
        if self._matcher.stopped:
            self._pending.clear()  # tokens that start inside the stop sequence
        self.kept.extend(out)
        return Released(text, out)
