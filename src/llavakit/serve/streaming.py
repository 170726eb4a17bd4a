"""``stream: true``: the answer as Server-Sent Events in OpenAI's chunk sequence.

A role chunk, one content chunk per piece of text the worker hands out, a final chunk with ``finish_reason``,
the usage chunk if ``stream_options.include_usage``, then ``data: [DONE]``. Headers (status 200) are sent
before the answer exists, so a failure mid-stream (timeout, worker error) arrives as an error event
``data: {"error": {...}}`` and ends the stream. Whenever the stream ends before its last chunk (the client went
away, time ran out), the row is cancelled and the worker drops it at its next step.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

from .batcher import Job
from .errors import error_body
from .metrics import Metrics
from .replies import SSE_DONE, Reply, sse


async def sse_stream(
    job: Job, events: asyncio.Queue, reply: Reply, timeout: float, include_usage: bool, metrics: Metrics
) -> AsyncIterator[str]:
    finished = False
    try:
        yield reply.chunk({"role": "assistant", "content": ""})
        while True:
            left = job.deadline + 1.0 - time.monotonic()  # the worker ends it at the deadline; this is a backstop
            try:
                ev = await asyncio.wait_for(events.get(), timeout=max(left, 0.01))
            except asyncio.TimeoutError:
                metrics.add("timeouts")
                ev = ("error", 504, f"the request ran out of time ({timeout} s)")
            if ev[0] == "delta":
                yield reply.chunk({"content": ev[1]})
            elif ev[0] == "error":
                err = error_body(ev[1], ev[2])
                err["error"]["code"] = str(ev[1])
                yield sse(err)
                return
            else:
                finished = True
                metrics.observe("latency", time.monotonic() - job.arrived)
                yield reply.chunk({}, ev[1])
                if include_usage:
                    yield reply.usage_chunk(job)
                yield SSE_DONE
                return
    finally:
        if not finished:
            job.cancelled.set()
