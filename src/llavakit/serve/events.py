"""Events from the model worker thread to the handlers on the event loop, with one loop wake-up per burst.

The worker emits a ``("delta", text)`` per generated token per row; waking the event loop for each one (a
``call_soon_threadsafe`` writes to the loop's self-pipe and the loop then takes the GIL from the worker) costs
more than a decode step of a small model once 16 rows stream at the same time. A ``Mailbox`` collects what the
worker posts and schedules a single delivery while the previous one is still pending: a decode step of 16 rows
wakes the loop once, not 16 times.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any


class Mailbox:
    """``post`` from any thread; the events reach their ``asyncio.Queue`` on ``loop``, in posting order."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.lock = threading.Lock()
        self.items: list[tuple[asyncio.Queue, Any]] = []

    def post(self, queue: asyncio.Queue, event: Any) -> None:
        with self.lock:
            first = not self.items
            self.items.append((queue, event))
        if first:  # otherwise a delivery is already scheduled and will take this event too
            try:
                self.loop.call_soon_threadsafe(self._deliver)
            except RuntimeError:  # the loop is closed (shutdown): nobody is waiting any more
                pass

    def _deliver(self) -> None:
        with self.lock:
            items, self.items = self.items, []
        for queue, event in items:
            queue.put_nowait(event)
