"""From token ids to text for streaming: stop strings matched on decoded text, never cut mid-character."""

from __future__ import annotations

from collections.abc import Collection
from typing import Any


class StopMatcher:
    """Feeds text deltas; emits only text that can no longer be the start of a stop string.

    >>> m = StopMatcher(["###"])
    >>> m.push("Hello #"), m.push("#"), m.push("# rest"), m.stopped
    ('Hello ', '', '', True)
    """

    def __init__(self, stops: list[str] | None) -> None:
        if stops is not None and (
            isinstance(stops, str) or not isinstance(stops, (list, tuple)) or not all(isinstance(s, str) for s in stops)
        ):
            raise ValueError(f"stop must be a string or a list of strings, got {stops!r}")
        if stops is not None and "" in stops:
            raise ValueError(f"stop strings must not be empty (one would end every answer at once), got {stops!r}")
        self.stops = list(stops or [])
        self.pending = ""
        self.stopped = False

    def push(self, delta: str) -> str:
        if self.stopped:
            return ""
        text = self.pending + delta
        cut = min((i for i in (text.find(s) for s in self.stops) if i >= 0), default=-1)
        if cut >= 0:
            self.stopped, self.pending = True, ""
            return text[:cut]
        hold = max((k for s in self.stops for k in range(1, len(s)) if text.endswith(s[:k])), default=0)
        self.pending = text[len(text) - hold :] if hold else ""
        return text[: len(text) - hold]

    def flush(self) -> str:
        out, self.pending = ("" if self.stopped else self.pending), ""
        return out


class AnswerText:
    """One answer's text as its tokens arrive (``Pipeline.stream``, each row of ``Pipeline.batch`` and of the
    server's batches): detokenized, without leading whitespace, cut at a stop string, never mid-character;
    ``reason`` is "stop" once it ended on an ``eos`` id or a stop string.

    The leading whitespace: after "ASSISTANT:" a byte-level tokenizer's first token is often " red". As original
    LLaVA strips its outputs, the answer is "red", so that it reads right and, sent back as the assistant message of
    the next turn, renders as the template trained it ("ASSISTANT: red</s>", not "ASSISTANT:  red</s>")."""

    def __init__(self, tokenizer: Any, stop: list[str] | tuple[str, ...] | str | None) -> None:
        self.decoder = tokenizer.decode_stream(skip_special_tokens=True)
        self.stops = StopMatcher([stop] if isinstance(stop, str) else stop)
        self.parts: list[str] = []
        self.tokens = 0  # generated tokens, the one that ended the answer included
        self.reason: str | None = None
        self.started = False  # some text other than whitespace has come

    def _lead(self, text: str) -> str:
        if not self.started:
            text = text.lstrip()
            self.started = bool(text)
        return text

    def push(self, token: int, eos: Collection[int] = ()) -> str:
        """Take the next token; return the text it makes final ("" when held back, or at EOS)."""
        self.tokens += 1
        if token in eos:
            self.reason = "stop"
            return ""
        delta = self.stops.push(self._lead(self.decoder.push(token)))
        self.parts.append(delta)
        if self.stops.stopped:
            self.reason = "stop"
        return delta

    def finish(self) -> str:
        """The text still held back once no token comes (none after a stop string)."""
        tail = "" if self.stops.stopped else self.stops.push(self._lead(self.decoder.flush())) + self.stops.flush()
        self.parts.append(tail)
        if self.stops.stopped:  # the decoder's last held-back text completed a stop string
            self.reason = "stop"
        return tail

    @property
    def text(self) -> str:
        return "".join(self.parts)
