"""OpenAI-shaped errors: {"error": {"message", "type", "param", "code"}} with the right status.

Every failure path of the server ends here, so no client ever sees another shape (FastAPI's
{"detail": ...} included). Messages are cut to a bounded length: an error about a huge input
never echoes that input back.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from qwq.engine.async_engine import EngineDeadError
from qwq.errors import QueueFullError, QwQError, RequestError, TemplateError

log = logging.getLogger("qwq.server")

MAX_MESSAGE = 500
RETRY_AFTER_S = 1

_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
          404: "not_found_error", 405: "invalid_request_error", 408: "timeout_error",
          413: "invalid_request_error",
          429: "rate_limit_error", 500: "server_error", 503: "service_unavailable"}


class APIError(Exception):
    """Raise anywhere in a handler to answer with an OpenAI-shaped error."""

    def __init__(self, status: int, message: str, param: str | None = None,
                 code: str | None = None, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return error_body(self.status, self.message, self.param, self.code)

    def response(self, path: str = "") -> Response:
        """The error as an HTTP response, in the shape of the API that path belongs to."""
        body = body_for(path, self.status, self.message, self.param, self.code)
        return JSONResponse(body, status_code=self.status, headers=self.headers)


def error_body(status: int, message: str, param: str | None = None,
               code: str | None = None) -> dict[str, Any]:
    if len(message) > MAX_MESSAGE:
        message = message[:MAX_MESSAGE] + "…"
    return {"error": {"message": message, "type": _TYPES.get(status, "invalid_request_error"),
                      "param": param, "code": code}}


def error_bytes(status: int, message: str, code: str | None = None, path: str = "") -> bytes:
    return json.dumps(body_for(path, status, message, code=code)).encode()


# Other APIs (Anthropic's, Ollama's) answer errors in their own shapes: their modules register
# a shape for their path prefix, fn(status, message, param, code) -> body.
ErrorShape = Callable[[int, str, str | None, str | None], dict[str, Any]]
ERROR_SHAPES: dict[str, ErrorShape] = {}


def body_for(path: str, status: int, message: str, param: str | None = None,
             code: str | None = None) -> dict[str, Any]:
    """The error body for a request to path: OpenAI's shape unless another API owns path."""
    for prefix, shape in ERROR_SHAPES.items():
        if path.startswith(prefix):
            cut = message[:MAX_MESSAGE] + "…" if len(message) > MAX_MESSAGE else message
            return shape(status, cut, param, code)
    return error_body(status, message, param, code)


def from_exception(e: BaseException) -> APIError:
    """The API error for an exception raised by the engine or the tokenizer."""
    if isinstance(e, APIError):
        return e
    if isinstance(e, RequestError):
        return APIError(400, str(e), e.param, e.code or "invalid_value")
    if isinstance(e, TemplateError):
        return APIError(400, f"the chat template failed on these messages: {e}", "messages",
                        "template_error")
    if isinstance(e, QueueFullError):
        return APIError(429, str(e), code="queue_full",
                        headers={"Retry-After": str(RETRY_AFTER_S)})
    if isinstance(e, EngineDeadError):
        return APIError(503, "the engine has stopped; the server cannot generate",
                        code="engine_dead", headers={"Retry-After": str(RETRY_AFTER_S)})
    log.error("unexpected error", exc_info=e)
    return APIError(500, f"internal error: {type(e).__name__}", code="internal_error")


_TYPE_TAGS = {"str", "int", "float", "bool", "dict", "list", "none", "literal"}


def _param_of(loc: tuple) -> str | None:
    """("body", "messages", 0, "content") -> "messages.0.content"; stops at pydantic's union
    tags (e.g. "list[str]"), which name a type, not a field."""
    parts = [str(p) for p in loc[1:] if isinstance(p, (str, int))] if loc[:1] == ("body",) \
        else [str(p) for p in loc]
    kept = []
    for p in parts:
        if not (p.isidentifier() or p.isdigit()) or p in _TYPE_TAGS:
            break
        kept.append(p)
    return ".".join(kept) or None


def validation_error(exc: RequestValidationError) -> APIError:
    errors = exc.errors()
    first = errors[0] if errors else {}
    if first.get("type") == "json_invalid":
        return APIError(400, "the request body is not valid JSON", None, "invalid_json")
    param = _param_of(tuple(first.get("loc", ())))
    if param is None and first.get("type") == "missing":
        return APIError(400, "the request has no JSON body", None, "invalid_request")
    message = f"{param or 'body'}: {first.get('msg', 'invalid value')}"
    if len(errors) > 1:
        message += f" (and {len(errors) - 1} more problems)"
    return APIError(400, message, param, "invalid_value")


def install(app: FastAPI) -> None:
    """Route every error through error_body."""

    @app.exception_handler(APIError)
    async def _api(r: Request, e: APIError) -> Response:
        return e.response(r.url.path)

    @app.exception_handler(RequestValidationError)
    async def _invalid(r: Request, e: RequestValidationError) -> Response:
        return validation_error(e).response(r.url.path)

    @app.exception_handler(StarletteHTTPException)
    async def _http(r: Request, e: StarletteHTTPException) -> Response:
        message = e.detail if isinstance(e.detail, str) else "request failed"
        return APIError(e.status_code, message, headers=dict(e.headers or {})).response(
            r.url.path)

    @app.exception_handler(QwQError)
    @app.exception_handler(EngineDeadError)
    async def _engine(r: Request, e: Exception) -> Response:
        return from_exception(e).response(r.url.path)

    @app.exception_handler(Exception)
    async def _unexpected(r: Request, e: Exception) -> Response:
        return from_exception(e).response(r.url.path)
