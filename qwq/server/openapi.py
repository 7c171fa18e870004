"""The OpenAPI document at /openapi.json, true to what the server does: every status code each
route answers with the error model and its headers, the media types it really sends (server-sent
events, Prometheus text), and the request constraints it enforces, those of the loaded model
included (token ids below its vocabulary, its guard names, the languages the control knows).

FastAPI's own document lists 200 and 422 only; this one starts from it, drops 422 (the server
answers 400) and adds the rest. Rules a JSON schema cannot state are named in the 400's
description with the error code that reports them.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from qwq.reasoning.guard import guard_names
from qwq.reasoning.language import LANGUAGE_SCRIPTS
from qwq.server.sampling import CONFLICTING_FIELDS, CONTEXT_LENGTH_EXCEEDED, INVALID_JSON_SCHEMA
from qwq.server.state import ServerState

JSON = "application/json"
_STR, _INT, _NUM = {"type": "string"}, {"type": "integer"}, {"type": "number"}
_NULLABLE_STR = {"type": ["string", "null"]}

ERROR = {"type": "object", "required": ["error"], "properties": {"error": {
    "type": "object", "required": ["message", "type", "param", "code"],
    "properties": {"message": _STR, "type": _STR, "param": _NULLABLE_STR,
                   "code": _NULLABLE_STR}}}}

_RETRY_AFTER = {"Retry-After": {"required": True, "schema": _STR,
                                "description": "seconds to wait before retrying"}}
BAD_REQUEST = (
    "The request is malformed or a value is out of range (`param` names the field; code "
    "`invalid_value`, `invalid_json` or `invalid_request`). Rules no JSON schema can state have "
    f"their own codes: `{CONTEXT_LENGTH_EXCEEDED}` (the prompt's tokens plus max_tokens, or "
    f"min_tokens, do not fit in the model's context: max_model_len in /v1/models), "
    f"`{CONFLICTING_FIELDS}` (top_logprobs without logprobs, min_tokens above max_tokens, "
    "best_of other than n, tool_choice naming no tool in tools, response_format json_schema "
    f"without a schema), `{INVALID_JSON_SCHEMA}` (a response_format or tool schema the grammar "
    "compiler refuses), `template_error` (messages the model's chat template refuses).")
ERRORS: dict[int, tuple[str, dict[str, Any]]] = {
    400: (BAD_REQUEST, {}),
    401: ("A valid API key is required: `Authorization: Bearer KEY`.",
          {"WWW-Authenticate": {"required": True, "schema": _STR}}),
    404: ("The model named is not the one this server serves.", {}),
    408: (("The request's headers or body did not arrive in time (`--header-timeout`, "
           "`--body-timeout`); the connection is closed."), {}),
    413: ("The request body is larger than `--max-body-size`; refused before it is read.", {}),
    429: ("The waiting queue is full.", _RETRY_AFTER),
    500: ("Generation failed (e.g. the model produced NaN logits).", {}),
    503: (("The server is draining (SIGTERM), its engine has stopped, or it has too many "
           "open connections."), _RETRY_AFTER),
}
# every route can answer these: refused before routing (connection cap, deadlines, body size)
_ANY_ROUTE = (408, 413, 503)
_ROUTES: dict[tuple[str, str], tuple[int, ...]] = {
    ("post", "/v1/chat/completions"): (400, 404, 429, 500),
    ("post", "/v1/completions"): (400, 404, 429, 500),
    ("get", "/v1/models/{model}"): (404,),
}


def _usage() -> dict[str, Any]:
    return {"type": "object", "required": ["prompt_tokens", "completion_tokens", "total_tokens"],
            "properties": {"prompt_tokens": _INT, "completion_tokens": _INT,
                           "total_tokens": _INT, "cost": _NUM,
                           "prompt_tokens_details": {"type": "object",
                                                     "properties": {"cached_tokens": _INT}}}}


def _answer(kind: str, choice: dict[str, Any]) -> dict[str, Any]:
    return {"type": "object", "required": ["id", "object", "created", "model", "choices", "usage"],
            "properties": {"id": _STR, "object": {"const": kind}, "created": _INT, "model": _STR,
                           "choices": {"type": "array", "items": choice}, "usage": _usage()}}


_FINISH = {"type": ["string", "null"]}
CHAT_COMPLETION = _answer("chat.completion", {
    "type": "object", "required": ["index", "message", "finish_reason"],
    "properties": {"index": _INT, "finish_reason": _FINISH,
                   "logprobs": {"type": ["object", "null"]},
                   "message": {"type": "object", "required": ["role", "content"],
                               "properties": {"role": {"const": "assistant"},
                                              "content": _NULLABLE_STR,
                                              "reasoning_content": _STR,
                                              "tool_calls": {"type": "array"}}}}})
COMPLETION = _answer("text_completion", {
    "type": "object", "required": ["index", "text", "finish_reason"],
    "properties": {"index": _INT, "text": _STR, "finish_reason": _FINISH,
                   "logprobs": {"type": ["object", "null"]}}})
MODEL = {"type": "object", "required": ["id", "object", "created", "owned_by"],
         "properties": {"id": _STR, "object": {"const": "model"}, "created": _INT,
                        "owned_by": _STR, "max_model_len": _INT}}
HEALTH = {"type": "object", "required": ["status"],
          "properties": {"status": {"enum": ["ok", "unavailable"]}}}
# OpenAPI 3.1: an event stream's `schema` describes each event
_SSE = {"text/event-stream": {"schema": {
    "type": "object", "required": ["data"],
    "description": "with stream: true, server-sent events: each `data` a chunk as JSON, the "
                   "last one `[DONE]`",
    "properties": {"data": _STR, "event": _STR}}}}
OK: dict[tuple[str, str], dict[str, Any]] = {
    ("post", "/v1/chat/completions"): {JSON: {"schema": CHAT_COMPLETION}, **_SSE},
    ("post", "/v1/completions"): {JSON: {"schema": COMPLETION}, **_SSE},
    ("get", "/v1/models"): {JSON: {"schema": {
        "type": "object", "required": ["object", "data"],
        "properties": {"object": {"const": "list"}, "data": {"type": "array", "items": MODEL}}}}},
    ("get", "/v1/models/{model}"): {JSON: {"schema": MODEL}},
    ("get", "/health"): {JSON: {"schema": HEALTH}},
    ("get", "/metrics"): {"text/plain": {"schema": {
        "type": "string", "description": "Prometheus text exposition format"}}},
}


def install(app: FastAPI, state: ServerState) -> None:
    """Serve this document at /openapi.json (built on first use, then kept)."""
    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = build(app, state)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def build(app: FastAPI, state: ServerState) -> dict[str, Any]:
    doc = get_openapi(title=app.title, version=app.version, description=app.description,
                      routes=app.routes)
    schemas = doc.setdefault("components", {}).setdefault("schemas", {})
    for name in ("HTTPValidationError", "ValidationError"):
        schemas.pop(name, None)
    schemas["Error"] = ERROR
    schemas["AnthropicError"] = ANTHROPIC_ERROR
    schemas["OllamaError"] = OLLAMA_ERROR
    keyed = bool(state.config.api_keys)
    if keyed:
        doc["components"]["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer"}}
    for path, ops in doc["paths"].items():
        for method, op in ops.items():
            op["responses"] = _responses(method, path, keyed, op["responses"])
            if keyed and path != "/health":
                op["security"] = [{"bearer": []}]
    _model_bounds(doc, state)
    return doc


# the other APIs answer errors in their own clients' shapes
ANTHROPIC_ERROR = {"type": "object", "required": ["type", "error"], "properties": {
    "type": {"const": "error"}, "error": {"type": "object", "required": ["type", "message"],
                                          "properties": {"type": _STR, "message": _STR}}}}
OLLAMA_ERROR = {"type": "object", "required": ["error"], "properties": {"error": _STR}}


def _error_schema(path: str) -> str:
    if path.startswith("/v1/messages"):
        return "AnthropicError"
    if path.startswith("/api/"):
        return "OllamaError"
    return "Error"


def _error(status: int, path: str = "") -> dict[str, Any]:
    description, headers = ERRORS[status]
    ref = {"$ref": f"#/components/schemas/{_error_schema(path)}"}
    out: dict[str, Any] = {"description": description, "content": {JSON: {"schema": ref}}}
    if headers:
        out["headers"] = headers
    return out


def _responses(method: str, path: str, keyed: bool,
               fastapi: dict[str, Any]) -> dict[str, Any]:
    """The OpenAI routes' answers as written above; the other APIs' (Anthropic, Responses,
    Ollama, tokenize) 200 as FastAPI derives it, with every error they can answer."""
    ok = OK.get((method, path))
    out: dict[str, Any] = {"200": {"description": "OK", "content": ok} if ok is not None
                           else fastapi.get("200", {"description": "OK"})}
    default = (400, 500) if method == "post" else ()
    statuses = set(_ROUTES.get((method, path), default)) | set(_ANY_ROUTE)
    if keyed and path != "/health":
        statuses.add(401)
    for status in sorted(statuses):
        out[str(status)] = _error(status, path)
    if path == "/health":  # draining or a dead engine: its own body; the cap: the error model
        out["503"]["content"][JSON]["schema"] = {
            "anyOf": [HEALTH, {"$ref": "#/components/schemas/Error"}]}
    return out


def _model_bounds(doc: dict[str, Any], state: ServerState) -> None:
    """What depends on the loaded model and the process: token ids below the vocabulary,
    logit_bias keys and values, guard names, language codes; integer bounds as integers
    (pydantic writes them as floats, and 2**62 as a float is not the bound the server has)."""

    vocab = state.tokenizer.vocab_size
    fields = {"language": ["auto", *sorted(LANGUAGE_SCRIPTS)], "guard": guard_names()}
    for schema in _walk(doc["components"]["schemas"]):
        if schema.pop("x-token-id", False):
            schema.pop("exclusiveMaximum", None)
            schema["maximum"] = vocab - 1
        for key in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"):
            value = schema.get(key)
            if schema.get("type") == "integer" and isinstance(value, float):
                schema[key] = int(value)
        props = schema.get("properties", {})
        for name, choices in fields.items():
            if name in props:
                props[name] = {"anyOf": [{"enum": choices}, {"type": "null"}], "default": None}
        if "logit_bias" in props:
            props["logit_bias"] = {"anyOf": [{"type": "null"}, {
                "type": "object", "maxProperties": 1024,
                "propertyNames": {"maxLength": 16, "pattern": digits_below(vocab)},
                "additionalProperties": {"type": "number", "minimum": -100, "maximum": 100}}]}


def _walk(node: Any):
    """Every dict in a nested JSON value, outermost first."""
    stack = [node]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            yield item
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)


def digits_below(n: int) -> str:
    """A regex for decimal strings (leading zeros allowed) of a value below n >= 1."""
    top = str(n - 1)
    alts = [f"[0-9]{{1,{len(top) - 1}}}"] if len(top) > 1 else []
    for i, digit in enumerate(top):
        if digit != "0":
            rest = len(top) - i - 1
            lower = f"[0-{int(digit) - 1}]" if digit != "1" else "0"
            alts.append(top[:i] + lower + (f"[0-9]{{{rest}}}" if rest else ""))
    alts.append(top)
    return "^0*(?:" + "|".join(alts) + ")$"
