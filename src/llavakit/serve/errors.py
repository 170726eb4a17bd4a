"""Errors in OpenAI's shape ``{"error": {"message", "type", "param", "code"}}`` and the app's exception handlers.

Whatever a client sends ends in a 4xx naming the field (``ApiError`` from the handlers, pydantic's validation
errors as 400 like OpenAI's, malformed JSON); a 500 is only ever a bug of ours, logged with its traceback.
A 500 (the same request would fail the same way) and a 504 (it would run out of time again) carry
``x-should-retry: false``: the official openai clients otherwise send the request twice more.
"""

from __future__ import annotations

import logging
import re

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger("llavakit.serve")

ERROR_TYPES = {401: "authentication_error", 404: "not_found_error", 429: "rate_limit_error", 504: "timeout"}
NOT_TO_RETRY = (500, 504)


class ApiError(Exception):
    """A request the server refuses: its HTTP status, the request field concerned, OpenAI's error code (e.g.
    "context_length_exceeded") and extra response headers."""

    def __init__(
        self,
        message: str,
        status: int = 400,
        param: str | None = None,
        headers: dict[str, str] | None = None,
        code: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.param, self.headers, self.code = status, param, headers, code


def model_not_found(model: str, served: str) -> ApiError:
    return ApiError(f"model {model!r} not found; this server serves {served!r}", 404, "model", code="model_not_found")


def error_body(
    status: int, message: str, *, param: str | None = None, kind: str | None = None, code: str | None = None
) -> dict:
    kind = kind or ERROR_TYPES.get(status, "invalid_request_error" if status < 500 else "server_error")
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def error_response(
    status: int,
    message: str,
    *,
    param: str | None = None,
    kind: str | None = None,
    headers: dict[str, str] | None = None,
    code: str | None = None,
) -> JSONResponse:
    if status in NOT_TO_RETRY:
        headers = {**(headers or {}), "x-should-retry": "false"}
    body = error_body(status, message, param=param, kind=kind, code=code)
    return JSONResponse(body, status_code=status, headers=headers)


def field_path(loc: tuple | list) -> str:
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


def validation_message(errors: list[dict]) -> tuple[str, str]:
    """(message, param): the deepest problems first (the branch that got furthest names the real problem)."""
    seen, items = set(), []
    for e in sorted(errors, key=lambda e: -len(e.get("loc", ()))):
        field = field_path(e.get("loc", ()))
        if (field, e.get("msg")) not in seen:
            seen.add((field, e.get("msg")))
            items.append((field, e.get("msg", "invalid").removeprefix("Value error, ")))  # our validators' own text
    if not items:
        return "invalid request", "body"
    return "invalid request: " + "; ".join(f"{f}: {m}" for f, m in items[:4]), items[0][0]


UNPARSED = "There was an error parsing the body"  # FastAPI's words for a body json.loads raised on, not as JSON


def unparsed_body(cause: BaseException) -> str:
    """What FastAPI's "There was an error parsing the body" was: the error json.loads raised, said for a client.

    Example: a 5000-digit number (Python refuses to convert integers of more than 4300 digits) -> "a number in the
    JSON body has 5000 digits, over the 4300 a number may have; no field takes such a number"."""
    text = str(cause)
    if isinstance(cause, UnicodeDecodeError):
        return f"the body is not UTF-8 text: {text}; send JSON encoded as UTF-8"
    if isinstance(cause, RecursionError):
        return "the JSON body is nested too deeply to be read; no request needs that depth"
    if isinstance(cause, ValueError) and "digits" in text:
        digits = re.search(r"value has (\d+) digits", text)
        limit = re.search(r"limit \((\d+) digits\)", text)
        has = f"has {digits.group(1)} digits" if digits else "is too long"
        over = f", over the {limit.group(1)} a number may have" if limit else ""
        return f"a number in the JSON body {has}{over}; no field takes such a number"
    return f"the body could not be read as JSON: {type(cause).__name__}: {text}"


def add_error_handlers(app: FastAPI) -> None:
    """Every exception a handler can raise answered in OpenAI's error shape."""

    @app.exception_handler(RequestValidationError)
    async def on_invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        for e in errors:
            if e.get("type") == "json_invalid":
                ctx = e.get("ctx", {}).get("error", "")
                return error_response(400, f"malformed JSON body: {ctx} (at position {e['loc'][-1]})", param="body")
        kind = request.headers.get("content-type", "")
        if request.method == "POST" and "json" not in kind.lower():
            return error_response(
                415,
                f"the body must be JSON sent with Content-Type: application/json, not {kind or 'no Content-Type'!r}",
                param="body",
            )
        message, param = validation_message(list(errors))
        return error_response(400, message, param=param)  # OpenAI answers an invalid request with 400, not 422

    @app.exception_handler(StarletteHTTPException)
    async def on_http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 400 and exc.__cause__ is not None and exc.detail == UNPARSED:
            return error_response(400, unparsed_body(exc.__cause__), param="body")
        return error_response(exc.status_code, str(exc.detail), headers=getattr(exc, "headers", None))

    @app.exception_handler(ApiError)
    async def on_api_error(request: Request, exc: ApiError) -> JSONResponse:
        return error_response(exc.status, str(exc), param=exc.param, headers=exc.headers, code=exc.code)

    @app.exception_handler(Exception)
    async def on_bug(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s", request.url.path)
        return error_response(500, f"internal error: {type(exc).__name__}")
