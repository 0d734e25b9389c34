"""Stop sequences over streamed text: cut at the first match, never leak a part of one.

Text arrives in token pieces, and a stop sequence can span pieces. Text that
could still be the start of a stop sequence is held back until the next piece
settles it, so a streaming client never receives a stop sequence, whole or in
part, and streamed and non-streamed replies are the same text.
"""

from __future__ import annotations

from collections.abc import Sequence


class StopMatcher:
    def __init__(self, stops: Sequence[str]) -> None:
        if any(not s for s in stops):
            raise ValueError("stop sequences must be non-empty")
        self._stops = tuple(stops)
        self.text = ""  # everything pushed, including held-back and cut-off text
        self.released = 0  # length of the prefix of ``text`` handed out
        self.stopped = False

    def push(self, piece: str) -> str:
        """Add a piece; return the text that is now safe to hand out ("" if none)."""
        if self.stopped:
            return ""
        # Nothing before ``released`` can start a match: a complete match would
        # have stopped us, a partial one at the end would have been held back.
        start = self.released
        self.text += piece
        cut = min(
            (i for i in (self.text.find(s, start) for s in self._stops) if i >= 0), default=-1
        )
        if cut >= 0:
            self.stopped = True
            return self._release(cut)
        return self._release(len(self.text) - self._held_back(start))

    def flush(self) -> str:
        """The generation ended: hand out whatever was held back."""
        return "" if self.stopped else self._release(len(self.text))

    def _held_back(self, start: int) -> int:
        """Length of the longest unreleased suffix that a stop sequence starts with."""
        tail = self.text[start:]
        longest = 0
        for stop in self._stops:
            for k in range(min(len(stop) - 1, len(tail)), longest, -1):
                if tail.endswith(stop[:k]):
                    longest = k
                    break
        return longest

    def _release(self, end: int) -> str:
        out = self.text[self.released : end]
        self.released = max(self.released, end)
        return out
