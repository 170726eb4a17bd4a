"""Stopping the server (SIGTERM, Ctrl-C) without breaking the requests in flight.

uvicorn's own shutdown closes the listening sockets, waits up to ``timeout_graceful_shutdown`` for the open
requests, then cancels the handlers still running, whose clients get a bare text 500 (streams just stop, with no
error event), and only after that runs the app's lifespan shutdown, which stops the model worker; meanwhile the
worker goes on admitting queued requests. ``DrainingServer`` does the worker's part first: queued requests, and new
ones on keep-alive connections opened before, get a 503 in OpenAI's error shape at once (``/health`` there:
"shutting_down"); then it closes the listening sockets (new connections are refused from then on: no 503 can
reach them); the answers being generated get ``grace`` seconds to finish, and what still runs then ends with
a 503 (streams: an error event), so every client hears why. Then uvicorn closes the open connections.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Callable

import uvicorn
from starlette.concurrency import run_in_threadpool

from .batcher import Batcher
from .config import SHUTDOWN_GRACE


class DrainingServer(uvicorn.Server):
    """uvicorn's server with the model worker drained first on shutdown (see the module docstring)."""

    def __init__(self, config: uvicorn.Config, batcher: Batcher, grace: float = SHUTDOWN_GRACE) -> None:
        super().__init__(config)
        self.batcher, self.grace = batcher, grace

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        # draining first: a client on an open keep-alive connection who finds new connections refused must
        # already hear "shutting_down", never a 200 from the gap between the two steps
        await run_in_threadpool(self.batcher.drain)
        await stop_accepting(getattr(self, "servers", []))  # uvicorn closes them again: harmless
        await finish(self.batcher, self.grace, lambda: self.force_exit)
        await super().shutdown(sockets)


async def stop_accepting(servers: list[asyncio.Server]) -> None:
    """Close the listening sockets without stranding a connection accepted just before.

    On asyncio's selector loop, ``Server.close()`` between a connection's ``accept()`` and the task that makes its
    transport (one loop turn later) makes that task fail silently, and the accepted socket is left open with no one
    to answer it until garbage collection: its client hangs (CPython gh-109564; seen here as a timed-out request
    after SIGTERM). So accepting stops first, the transports of what was accepted are made in the next turn (their
    requests get the draining answers), and only then do the sockets close.
    """
    loop = asyncio.get_running_loop()
    if isinstance(loop, asyncio.selector_events.BaseSelectorEventLoop):
        for server in servers:
            for sock in server.sockets:
                loop.remove_reader(sock.fileno())
        await asyncio.sleep(0)  # the accept tasks were scheduled before this coroutine's wake-up
    for server in servers:
        server.close()


async def finish(batcher: Batcher, grace: float, forced: Callable[[], bool] = lambda: False) -> None:
    """After ``batcher.drain`` (queued and new jobs refused): give the running ones ``grace`` seconds (less if
    ``forced()``: a second Ctrl-C), then stop the worker, which ends what still runs with a 503."""
    end = time.monotonic() + grace
    while batcher.thread.is_alive() and time.monotonic() < end and not forced():
        await asyncio.sleep(0.05)
    await run_in_threadpool(batcher.stop)
