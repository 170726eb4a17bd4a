"""From token ids to text for streaming: stop strings matched on decoded text, never cut mid-character."""

from __future__ import annotations


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
        self.stops = [s for s in (stops or []) if s]
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
