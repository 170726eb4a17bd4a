"""ASGI middleware in front of every route: request counting, the API key and the body size limit.

Both refusals happen before any parsing: a client without the key cannot make the server read (or decode) a
64 MiB body; outside ``/v1/`` (no route there takes a body) a body is never read. The key guards the API
(``/v1/...``) only; the chat page (which asks for the key and sends it), ``/health`` and ``/metrics`` (for load
balancers and Prometheus scrapers, which rarely carry a bearer token; they show counts, never request content)
and the OpenAPI docs stay open.
"""

from __future__ import annotations

import hmac
from typing import Any

from starlette.responses import Response

from .config import ServeConfig
from .errors import error_response
from .metrics import Metrics

PROTECTED_PREFIX = "/v1/"


def bearer_ok(authorization: bytes, key: bytes) -> bool:
    """True if the ``Authorization`` header is ``Bearer <key>``; the key compared in constant time.

    >>> bearer_ok(b"Bearer s3cret", b"s3cret"), bearer_ok(b"bearer s3cret ", b"s3cret"), bearer_ok(b"s3cret", b"s3cret")
    (True, True, False)
    """
    scheme, _, token = authorization.partition(b" ")
    return scheme.lower() == b"bearer" and hmac.compare_digest(token.strip(), key)


class Guard:
    """Counts every answer by status, refuses a missing / wrong key (401) and bodies over the limit (413)."""

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
            # only the API's routes take a body: elsewhere (405 / 404) none is read, let alone held in memory
            api = scope["path"].startswith(PROTECTED_PREFIX)
            if refusal is None and api and scope["method"] in ("POST", "PUT", "PATCH"):
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
        if self.key is not None and scope["path"].startswith(PROTECTED_PREFIX):
            if not bearer_ok(headers.get("authorization", b""), self.key):
                return error_response(
                    401,
                    "missing or wrong API key; send the header 'Authorization: Bearer <key>'",
                    headers={"WWW-Authenticate": "Bearer"},
                )
        length = headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > self.config.max_body_bytes):
            return self._too_large()
        return None

    def _too_large(self) -> Response:
        return error_response(413, f"request body is over the limit of {self.config.max_body_bytes} bytes")

    async def _read_body(self, receive: Any) -> tuple[bytes, Response | None]:
        chunks, size = [], 0
        while True:
            msg = await receive()
            if msg["type"] == "http.disconnect":
                return b"", Response(status_code=400)
            chunks.append(msg.get("body", b""))
            size += len(chunks[-1])
            if size > self.config.max_body_bytes:
                return b"", self._too_large()
            if not msg.get("more_body", False):
                return b"".join(chunks), None


def _replay(body: bytes, receive: Any) -> Any:
    """A ``receive`` that hands out the body already read, then waits on the real one (for the disconnect)."""
    sent = [False]

    async def replay() -> dict:
        if not sent[0]:
            sent[0] = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay
