"""The response bodies in OpenAI's shapes: ``chat.completion``, ``chat.completion.chunk`` and ``usage``."""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass, field

from .batcher import Job


@dataclass
class Reply:
    """What every body of one answer shares: its id, creation time, model and the prompt side of ``usage``."""

    model: str
    prompt_tokens: int  # image tokens included
    image_tokens: int
    include_usage: bool = False  # stream_options.include_usage: every chunk carries "usage" (null until the last)
    video_tokens: int = 0  # in prompt_tokens too; given alone in prompt_tokens_details when a video was sent
    id: str = field(default_factory=lambda: f"chatcmpl-{uuid.uuid4().hex}")
    created: int = field(default_factory=lambda: int(time.time()))

    def usage(self, job: Job) -> dict:
        details = {"image_tokens": self.image_tokens}
        if self.video_tokens:
            details["video_tokens"] = self.video_tokens
        return {
            "prompt_tokens": self.prompt_tokens,
            "prompt_tokens_details": details,
            "completion_tokens": job.completion_tokens,
            "total_tokens": self.prompt_tokens + job.completion_tokens,
        }

    def completion(self, text: str, finish_reason: str, job: Job) -> dict:
        msg = {"role": "assistant", "content": text}
        return {
            "id": self.id,
            "object": "chat.completion",
            "created": self.created,
            "model": self.model,
            "choices": [{"index": 0, "message": msg, "finish_reason": finish_reason, "logprobs": None}],
            "usage": self.usage(job),
        }

    def _chunk(self, choices: list[dict], **extra: dict | None) -> str:
        c = {"id": self.id, "object": "chat.completion.chunk", "created": self.created, "model": self.model}
        return sse({**c, "choices": choices, **extra})

    def chunk(self, delta: dict, finish_reason: str | None = None) -> str:
        """One SSE event: a content (or role) delta, or the final empty delta with its ``finish_reason``."""
        choice = {"index": 0, "delta": delta, "finish_reason": finish_reason, "logprobs": None}
        return self._chunk([choice], **({"usage": None} if self.include_usage else {}))

    def usage_chunk(self, job: Job) -> str:
        """The extra last chunk of ``stream_options.include_usage``: no choices, the whole ``usage``."""
        return self._chunk([], usage=self.usage(job))


def sse(obj: dict) -> str:
    return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"


SSE_DONE = "data: [DONE]\n\n"
