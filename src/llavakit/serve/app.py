"""The HTTP server: OpenAI-compatible chat completions, models, health, metrics and the chat page.

    app = create_app(llavakit.load(path), ServeConfig(model_name="llava", api_key="..."))
    uvicorn.run(app, host="127.0.0.1", port=8000)

The pieces: ``guard.py`` (API key, body limit, request counting), ``errors.py`` (OpenAI-shaped errors, never a
500 for anything a client sends), ``completions.py`` (the chat route) with ``prepare.py`` (request -> model
inputs), ``streaming.py`` (SSE), ``batcher.py`` (the model worker) and ``events.py`` (worker -> event loop).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse
from starlette.concurrency import run_in_threadpool

from ..engine.generate import decode_step
from .batcher import Batcher
from .completions import ERRORS, add_chat_route
from .config import ServeConfig
from .errors import add_error_handlers, model_not_found
from .events import Mailbox
from .guard import Guard
from .metrics import Metrics
from .schemas import Health, ModelCard, ModelList

__all__ = ["ServeConfig", "create_app"]


def create_app(pipe: Any, config: ServeConfig | None = None) -> FastAPI:
    """The FastAPI app around a loaded ``Pipeline``; the model worker runs while the app runs. A pipeline loaded
    with ``compile=True`` decodes through its compiled step (``command.warm_up`` builds its graphs beforehand)."""
    config = config or ServeConfig()
    metrics = Metrics()
    batcher = Batcher(
        pipe.model,
        pipe.processor.tokenizer,
        max_batch_size=config.max_batch_size,
        max_queue=config.max_concurrency,
        metrics=metrics,
        step=getattr(pipe, "step", decode_step),  # compiled when the pipeline was loaded with compile=True
    )
    metrics.gauges["llava_queue_depth"] = ("requests waiting for the model worker", lambda: batcher.queue_depth)
    metrics.gauges["llava_running_requests"] = ("requests in the batch being generated", lambda: batcher.running)
    created = int(time.time())

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.mailbox = Mailbox(asyncio.get_running_loop())
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
    add_error_handlers(app)
    add_chat_route(app, pipe, batcher, metrics, config)

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def chat_page() -> HTMLResponse:
        from .ui import page

        return HTMLResponse(page(config.model_name, needs_key=config.api_key is not None, max_tokens=config.max_tokens))

    # HEAD too (probes use it), outside the schema: one route for both methods gave /docs a duplicate operation id
    @app.head("/health", include_in_schema=False)
    @app.get("/health", response_model=Health, responses={503: {"model": Health}})
    async def health() -> JSONResponse:
        body = {
            "status": "ok" if batcher.alive else "shutting_down" if batcher.closing else "error",
            "model": config.model_name,
            "queue_depth": batcher.queue_depth,
            "running": batcher.running,
        }
        return JSONResponse(body, status_code=200 if batcher.alive else 503)

    @app.get("/metrics", response_class=PlainTextResponse)
    async def metrics_text() -> PlainTextResponse:
        return PlainTextResponse(metrics.render(), media_type="text/plain; version=0.0.4")

    card = {"id": config.model_name, "object": "model", "created": created, "owned_by": "llavakit"}

    @app.get("/v1/models", response_model=ModelList, responses={401: ERRORS[401]})
    async def models() -> dict:
        return {"object": "list", "data": [card]}

    @app.get("/v1/models/{model_id:path}", response_model=ModelCard, responses={401: ERRORS[401], 404: ERRORS[404]})
    async def model(model_id: str) -> dict:
        if model_id != config.model_name:
            raise model_not_found(model_id, config.model_name)
        return card

    return app
