"""The HTTP server: OpenAI-compatible chat completions, models, health, metrics and the chat page.

    app = create_app(llavakit.load(path), ServeConfig(model_name="llava", api_key="..."))
    uvicorn.run(app, host="127.0.0.1", port=8000)

Handlers validate and prepare requests (``prepare.py``) and hand them to the model worker (``batcher.py``);
every error answers in OpenAI's shape ``{"error": {"message", "type", "param", "code"}}`` with a 4xx status
naming the field, never a 500 for anything a client sends.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import math
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..engine.sampling import SamplingParams
from .batcher import Batcher, Job, QueueFull
from .images import ImageLimits
from .metrics import Metrics
from .prepare import ApiError, prepare
from .schemas import ChatCompletion, ChatCompletionRequest, ErrorResponse, Health, ModelList

log = logging.getLogger("llavakit.serve")


@dataclass
class ServeConfig:
    model_name: str = "llava"
    api_key: str | None = None
    max_batch_size: int = 8
    max_concurrency: int = 64  # requests in flight (queued + running); more -> 429
    timeout: float = 300.0  # seconds per request, queueing included
    max_tokens: int | None = None  # largest max_tokens a request may ask for (None: the context)
    default_max_tokens: int = 256
    max_body_bytes: int = 64 * 1024 * 1024
    images: ImageLimits = field(default_factory=ImageLimits)


def error_response(
    status: int,
    message: str,
    *,
    param: str | None = None,
    kind: str | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    kind = kind or {401: "authentication_error", 404: "not_found_error", 429: "rate_limit_error"}.get(
        status, "invalid_request_error" if status < 500 else "server_error"
    )
    body = {"error": {"message": message, "type": kind, "param": param, "code": None}}
    return JSONResponse(body, status_code=status, headers=headers)


class Guard:
    """ASGI middleware: request counting, the body size limit and the API key, before any parsing."""

    def __init__(self, app: Any, config: ServeConfig, metrics: Metrics) -> None:
        self.app, self.config, self.metrics = app, config, metrics
        self.key = config.api_key.encode() if config.api_key else None

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        status = [500]

        async def counting_send(msg: dict) -> None:
            if msg["type"] == "http.response.start":
                status[0] = msg["status"]
            await send(msg)

        try:
            refusal = self._refuse(scope)
            if refusal is None and scope["method"] in ("POST", "PUT", "PATCH"):
                body, refusal = await self._read_body(receive)
                if refusal is None:
                    receive = _replay(body, receive)
            if refusal is not None:
                await refusal(scope, receive, counting_send)
            else:
                await self.app(scope, receive, counting_send)
        finally:
            self.metrics.count_request(status[0])

    def _refuse(self, scope: dict) -> Response | None:
        headers = {k.decode("latin-1").lower(): v for k, v in scope.get("headers", [])}
        if self.key is not None and scope["path"].startswith("/v1/"):
            auth = headers.get("authorization", b"")
            scheme, _, token = auth.partition(b" ")
            if scheme.lower() != b"bearer" or not hmac.compare_digest(token.strip(), self.key):
                return error_response(
                    401,
                    "missing or wrong API key; send the header 'Authorization: Bearer <key>'",
                    headers={"WWW-Authenticate": "Bearer"},
                )
        length = headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > self.config.max_body_bytes):
            return error_response(413, f"request body is over the limit of {self.config.max_body_bytes} bytes")
        return None

    async def _read_body(self, receive: Any) -> tuple[bytes, Response | None]:
        chunks, size = [], 0
        while True:
            msg = await receive()
            if msg["type"] == "http.disconnect":
                return b"", Response(status_code=400)
            chunks.append(msg.get("body", b""))
            size += len(chunks[-1])
            if size > self.config.max_body_bytes:
                return b"", error_response(413, f"request body is over the limit of {self.config.max_body_bytes} bytes")
            if not msg.get("more_body", False):
                return b"".join(chunks), None


def _replay(body: bytes, receive: Any) -> Any:
    sent = [False]

    async def replay() -> dict:
        if not sent[0]:
            sent[0] = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()  # later reads wait for the disconnect

    return replay


def _field(loc: tuple | list) -> str:
    """A pydantic error location as a request path: ('body', 'messages', 0, 'content') -> 'messages[0].content'.

    Union branch names ('str', 'list[...]') are dropped and a tagged union's tag ('image_url' before the field
    of the same name) is folded into the field.
    """
    parts: list[str] = []
    for p in loc:
        p = str(p)
        branch = "[" in p or p in ("str", "int", "float", "bool", "none") or p.startswith(("constrained-", "function-"))
        if p == "body" or branch or (parts and parts[-1] == p):
            continue
        parts.append(p)
    out = ""
    for p in parts:
        out += f"[{p}]" if p.isdigit() else (f".{p}" if out else p)
    return out or "body"


def _validation_message(errors: list[dict]) -> tuple[str, str]:
    """(message, param): the deepest problems first (the branch that got furthest names the real problem)."""
    seen, items = set(), []
    for e in sorted(errors, key=lambda e: -len(e.get("loc", ()))):
        field = _field(e.get("loc", ()))
        if (field, e.get("msg")) not in seen:
            seen.add((field, e.get("msg")))
            items.append((field, e.get("msg", "invalid")))
    if not items:
        return "invalid request", "body"
    return "invalid request: " + "; ".join(f"{f}: {m}" for f, m in items[:4]), items[0][0]


def create_app(pipe: Any, config: ServeConfig | None = None) -> FastAPI:
    """The FastAPI app around a loaded ``Pipeline``; the model worker runs while the app runs."""
    config = config or ServeConfig()
    metrics = Metrics()
    batcher = Batcher(
        pipe.model,
        pipe.processor.tokenizer,
        max_batch_size=config.max_batch_size,
        max_queue=config.max_concurrency,
        metrics=metrics,
    )
    metrics.gauges["llava_queue_depth"] = ("requests waiting for the model worker", lambda: batcher.queue_depth)
    metrics.gauges["llava_running_requests"] = ("requests in the batch being generated", lambda: batcher.running)
    created = int(time.time())

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        batcher.start()
        yield
        await run_in_threadpool(batcher.stop)

    app = FastAPI(
        title="llavakit",
        version="1",
        lifespan=lifespan,
        description="OpenAI-compatible chat completions for LLaVA models, and a chat page at /.",
    )
    app.state.batcher, app.state.metrics, app.state.config = batcher, metrics, config
    app.add_middleware(Guard, config=config, metrics=metrics)

    @app.exception_handler(RequestValidationError)
    async def on_invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        for e in errors:
            if e.get("type") == "json_invalid":
                ctx = e.get("ctx", {}).get("error", "")
                return error_response(400, f"malformed JSON body: {ctx} (at position {e['loc'][-1]})", param="body")
        message, param = _validation_message(list(errors))
        return error_response(422, message, param=param)

    @app.exception_handler(StarletteHTTPException)
    async def on_http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return error_response(exc.status_code, str(exc.detail), headers=getattr(exc, "headers", None))

    @app.exception_handler(ApiError)
    async def on_api_error(request: Request, exc: ApiError) -> JSONResponse:
        return error_response(exc.status, str(exc), param=exc.param, headers=exc.headers)

    @app.exception_handler(Exception)
    async def on_bug(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s", request.url.path)
        return error_response(500, f"internal error: {type(exc).__name__}")

    errors: dict[int | str, dict[str, Any]] = {s: {"model": ErrorResponse} for s in (400, 401, 404, 413, 422, 429, 504)}

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def chat_page() -> HTMLResponse:
        from .ui import page

        return HTMLResponse(page(config.model_name, needs_key=config.api_key is not None))

    @app.get("/health", response_model=Health)
    async def health() -> dict:
        return {
            "status": "ok",
            "model": config.model_name,
            "queue_depth": batcher.queue_depth,
            "running": batcher.running,
        }

    @app.get("/metrics", response_class=PlainTextResponse)
    async def metrics_text() -> PlainTextResponse:
        return PlainTextResponse(metrics.render(), media_type="text/plain; version=0.0.4")

    @app.get("/v1/models", response_model=ModelList, responses={401: errors[401]})
    async def models() -> dict:
        return {
            "object": "list",
            "data": [{"id": config.model_name, "object": "model", "created": created, "owned_by": "llavakit"}],
        }

    @app.post("/v1/chat/completions", response_model=ChatCompletion, responses=errors)
    async def chat_completions(body: ChatCompletionRequest, request: Request) -> Any:
        arrived = time.monotonic()
        if body.model != config.model_name:
            raise ApiError(f"model {body.model!r} not found; this server serves {config.model_name!r}", 404, "model")
        if batcher.full():
            raise _busy(metrics, batcher)
        batcher.preparing_delta(1)
        try:
            prep = await run_in_threadpool(prepare, body, pipe, config)
        finally:
            batcher.preparing_delta(-1)
        loop = asyncio.get_running_loop()
        events: asyncio.Queue = asyncio.Queue()

        def emit(ev: tuple) -> None:
            try:
                loop.call_soon_threadsafe(events.put_nowait, ev)
            except RuntimeError:  # the loop is gone (shutdown)
                pass

        p = body
        params = SamplingParams(p.temperature, p.top_p, p.top_k, p.repetition_penalty, p.seed)
        job = Job(
            prep.input_ids,
            prep.vision,
            prep.max_new_tokens,
            params,
            body.stop_list(),
            deadline=arrived + config.timeout,
            emit=emit,
            arrived=arrived,
        )
        try:
            batcher.submit(job)
        except QueueFull:
            raise _busy(metrics, batcher) from None
        metrics.add("prompt_tokens", prep.prompt_tokens)
        rid, now = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
        usage = {"prompt_tokens": prep.prompt_tokens, "prompt_tokens_details": {"image_tokens": prep.image_tokens}}
        if body.stream:
            include_usage = bool(body.stream_options and body.stream_options.include_usage)
            chunks = _sse(job, events, rid, now, config, usage, include_usage, metrics)
            return StreamingResponse(chunks, media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
        return await _complete(request, job, events, rid, now, config, usage, metrics)

    return app


def _busy(metrics: Metrics, batcher: Batcher) -> ApiError:
    metrics.add("rejected")
    with metrics.lock:
        mean = metrics.latency.sum / metrics.latency.total if metrics.latency.total else 1.0
    wait = max(1, math.ceil(mean * (batcher.queue_depth + 1) / batcher.max_batch_size))
    return ApiError(
        f"the server is busy ({batcher.max_queue} requests in flight); retry after {wait} s",
        429,
        headers={"Retry-After": str(wait)},
    )


def _usage(usage: dict, job: Job) -> dict:
    return {
        **usage,
        "completion_tokens": job.completion_tokens,
        "total_tokens": usage["prompt_tokens"] + job.completion_tokens,
    }


async def _complete(
    request: Request,
    job: Job,
    events: asyncio.Queue,
    rid: str,
    created: int,
    config: ServeConfig,
    usage: dict,
    metrics: Metrics,
) -> Response:
    """Wait for the whole answer, cancelling the job if the client goes away or time runs out."""
    parts: list[str] = []
    checked = time.monotonic()
    while True:
        try:
            ev = await asyncio.wait_for(events.get(), timeout=0.5)
        except asyncio.TimeoutError:
            ev = None
        if time.monotonic() - checked >= 0.5:  # tokens may flow without pause: look at the client now and then
            checked = time.monotonic()
            if await request.is_disconnected():
                job.cancelled.set()
                return Response(status_code=499)
        if ev is None:
            if time.monotonic() > job.deadline + 1.0:  # the worker missed it (e.g. stuck in a long prefill)
                job.cancelled.set()
                metrics.add("timeouts")
                return error_response(504, f"the request ran out of time ({config.timeout} s)", kind="timeout")
            continue
        if ev[0] == "delta":
            parts.append(ev[1])
        elif ev[0] == "error":
            return error_response(ev[1], ev[2], kind="timeout" if ev[1] == 504 else None)
        else:
            metrics.observe("latency", time.monotonic() - job.arrived)
            msg = {"role": "assistant", "content": "".join(parts)}
            choice = {"index": 0, "message": msg, "finish_reason": ev[1], "logprobs": None}
            return JSONResponse(
                {
                    "id": rid,
                    "object": "chat.completion",
                    "created": created,
                    "model": config.model_name,
                    "choices": [choice],
                    "usage": _usage(usage, job),
                }
            )


async def _sse(
    job: Job,
    events: asyncio.Queue,
    rid: str,
    created: int,
    config: ServeConfig,
    usage: dict,
    include_usage: bool,
    metrics: Metrics,
) -> AsyncIterator[str]:
    """OpenAI's chunk stream: a role chunk, content chunks, a finish chunk, [usage chunk], ``[DONE]``."""

    def chunk(delta: dict, finish: str | None = None) -> str:
        c = {
            "id": rid,
            "object": "chat.completion.chunk",
            "created": created,
            "model": config.model_name,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}],
        }
        return f"data: {json.dumps(c, ensure_ascii=False)}\n\n"

    finished = False
    try:
        yield chunk({"role": "assistant", "content": ""})
        while True:
            left = job.deadline + 1.0 - time.monotonic()
            try:
                ev = await asyncio.wait_for(events.get(), timeout=max(left, 0.01))
            except asyncio.TimeoutError:
                metrics.add("timeouts")
                ev = ("error", 504, f"the request ran out of time ({config.timeout} s)")
            if ev[0] == "delta":
                yield chunk({"content": ev[1]})
            elif ev[0] == "error":
                err = {
                    "error": {
                        "message": ev[2],
                        "type": "timeout" if ev[1] == 504 else "server_error",
                        "param": None,
                        "code": str(ev[1]),
                    }
                }
                yield f"data: {json.dumps(err)}\n\n"
                return
            else:
                finished = True
                metrics.observe("latency", time.monotonic() - job.arrived)
                yield chunk({}, ev[1])
                if include_usage:
                    u = {
                        "id": rid,
                        "object": "chat.completion.chunk",
                        "created": created,
                        "model": config.model_name,
                        "choices": [],
                        "usage": _usage(usage, job),
                    }
                    yield f"data: {json.dumps(u)}\n\n"
                yield "data: [DONE]\n\n"
                return
    finally:
        if not finished:
            job.cancelled.set()  # client gone (or error): the worker drops the row at its next step
