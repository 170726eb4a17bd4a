"""``POST /v1/chat/completions``: check, prepare off the event loop, hand to the model worker, answer.

The handler refuses early what it can (unknown model 404, full server 429 with ``Retry-After``), prepares the
request in a worker thread (``prepare.py``: images decoded and preprocessed, prompt rendered, token budget
checked; at most ``prepare_threads`` at a time, in arrival order, so that a burst of requests reaches the model
worker one by one instead of all together at the end), submits a ``Job`` and then either streams
(``streaming.py``) or waits for the whole answer. The worker's events come back through a ``Mailbox``.
"""

from __future__ import annotations

import asyncio
import math
import threading
import time
from functools import partial
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.concurrency import run_in_threadpool

from ..engine.sampling import SamplingParams
from .batcher import SHUTTING_DOWN, Batcher, Job, QueueFull
from .config import ServeConfig
from .errors import ApiError, error_response, model_not_found
from .events import Mailbox
from .metrics import Metrics
from .prepare import prepare
from .replies import Reply
from .schemas import ChatCompletion, ChatCompletionRequest, ErrorResponse
from .streaming import sse_stream

STATUSES = (400, 401, 404, 413, 415, 429, 503, 504)
ERRORS: dict[int | str, dict[str, Any]] = {s: {"model": ErrorResponse} for s in STATUSES}


def add_chat_route(app: FastAPI, pipe: Any, batcher: Batcher, metrics: Metrics, config: ServeConfig) -> None:
    slots = threading.Semaphore(config.prepare_threads)  # image / video decoding + preprocessing at a time

    @app.post("/v1/chat/completions", response_model=ChatCompletion, responses=ERRORS)
    async def chat_completions(body: ChatCompletionRequest, request: Request) -> Any:
        arrived = time.monotonic()
        if body.model != config.model_name:
            raise model_not_found(body.model, config.model_name)
        if batcher.closing:
            raise ApiError(SHUTTING_DOWN, 503)
        if not batcher.alive:
            raise ApiError("the model worker has stopped (see the server's log); restart the server", 503)
        if batcher.full():
            raise busy_error(metrics, batcher)
        batcher.preparing_delta(1)
        try:
            prep = await run_in_threadpool(prepare, body, pipe, config, slots)
        finally:
            batcher.preparing_delta(-1)
        events: asyncio.Queue = asyncio.Queue()
        params = SamplingParams(body.temperature, body.top_p, body.top_k, body.repetition_penalty, body.seed)
        job = Job(
            prep.input_ids,
            prep.vision,
            prep.max_new_tokens,
            params,
            body.stop_list(),
            deadline=arrived + config.timeout,
            emit=partial(mailbox(app).post, events),
            arrived=arrived,
            stream=body.stream,
            ignore_eos=body.ignore_eos,
        )
        try:
            batcher.submit(job)
        except QueueFull:
            raise busy_error(metrics, batcher) from None
        metrics.add("prompt_tokens", prep.prompt_tokens)
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        reply = Reply(config.model_name, prep.prompt_tokens, prep.image_tokens, include_usage, prep.video_tokens)
        if body.stream:
            chunks = sse_stream(job, events, reply, config.timeout, include_usage, metrics)
            return StreamingResponse(chunks, media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
        return await wait_for_answer(request, job, events, reply, config.timeout, metrics)


def mailbox(app: FastAPI) -> Mailbox:
    """The app's mailbox on the running loop (made by the lifespan; here too for apps run without one)."""
    box = getattr(app.state, "mailbox", None)
    if box is None:
        box = app.state.mailbox = Mailbox(asyncio.get_running_loop())
    return box


def busy_error(metrics: Metrics, batcher: Batcher) -> ApiError:
    """429 with a ``Retry-After`` from the mean latency and the queue ahead."""
    metrics.add("rejected")
    with metrics.lock:
        mean = metrics.latency.sum / metrics.latency.total if metrics.latency.total else 1.0
    wait = max(1, math.ceil(mean * (batcher.queue_depth + 1) / batcher.max_batch_size))
    return ApiError(
        f"the server is busy ({batcher.max_queue} requests in flight); retry after {wait} s",
        429,
        headers={"Retry-After": str(wait)},
    )


async def _until_disconnect(request: Request) -> None:
    """Return when the client has gone away.

    The body has been read by now, so the server's next ``receive`` message is ``http.disconnect``: it arrives
    when the connection drops (or once the response is sent, by which time this task is cancelled). This
    replaces asking ``request.is_disconnected()`` every half second from each waiting handler, which held the
    GIL (that the model worker needs between its ops) for ~2 ms per call: ~6% of the wall time at 16 clients
    (py-spy, default model).
    """
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def wait_for_answer(
    request: Request, job: Job, events: asyncio.Queue, reply: Reply, timeout: float, metrics: Metrics
) -> Response:
    """The whole answer, cancelling the job if the client goes away or time runs out."""
    parts: list[str] = []
    gone = asyncio.ensure_future(_until_disconnect(request))
    try:
        while True:
            left = job.deadline + 1.0 - time.monotonic()  # the worker ends it at the deadline; this is a backstop
            get = asyncio.ensure_future(events.get())
            done, _ = await asyncio.wait({get, gone}, timeout=max(left, 0.01), return_when=asyncio.FIRST_COMPLETED)
            if get not in done:
                get.cancel()
                job.cancelled.set()
                if gone in done:
                    return Response(status_code=499)
                metrics.add("timeouts")
                return error_response(504, f"the request ran out of time ({timeout} s)")
            ev = get.result()
            if ev[0] == "delta":
                parts.append(ev[1])
            elif ev[0] == "error":
                return error_response(ev[1], ev[2])
            else:
                metrics.observe("latency", time.monotonic() - job.arrived)
                return JSONResponse(reply.completion("".join(parts), ev[1], job))
    finally:
        gone.cancel()
