"""Ollama's API for its clients (the `ollama` package, tools built on it): POST /api/chat and
POST /api/generate, streamed as NDJSON by default; the model listings are in ollama_info.py.

/api/chat becomes an OpenAI chat request (bridge.chat_request) on the chat route's path;
/api/generate runs its prompt through the chat template as one user turn, or as written with
`raw: true`, or as fill-in-the-middle with `suffix`. `think` splits the reasoning into
`thinking` (false leaves it out; "low" / "medium" / "high" are thinking budgets), `format` is
"json" or a JSON schema, `options` map to sampling. Errors are Ollama's {"error": "..."}.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from contextlib import aclosing
from datetime import datetime, timezone
from typing import Annotated, Any, Literal

import anyio
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field

from qwq.errors import RequestError
from qwq.sampling_params import MAX_STOP_STRINGS
from qwq.server.bridge import Answer, Piece, Run, chat_request, passthrough, validated
from qwq.server.errors import ERROR_SHAPES, APIError
from qwq.server.prompts import fim_ids
from qwq.server.protocol import MAX_ITEMS, CompletionRequest, Name, StopString
from qwq.server.sampling import resolve_max_tokens, sampling_params
from qwq.server.state import ServerState, state_of, tenant_of
from qwq.server.streaming import SSEResponse

router = APIRouter()


def error_shape(status: int, message: str, param: str | None = None,
                code: str | None = None) -> dict[str, Any]:
    return {"error": message}


ERROR_SHAPES["/api/"] = error_shape


def served_name(state: ServerState, asked: str | None) -> str:
    """Ollama names carry a tag; `name:latest` is the served name."""
    if asked and asked.endswith(":latest"):
        asked = asked[:-len(":latest")]
    return state.model_name(asked)


# -- the requests ---------------------------------------------------------------------------------
class _Body(BaseModel):
    model_config = ConfigDict(extra="allow")  # extras: qwq's reasoning controls (bridge)


class Options(_Body):
    """The sampling options qwq honours; Ollama's runtime options (num_ctx, num_gpu,
    num_thread, ...) are accepted and ignored: the server's operator sets those. qwq's own
    fields (reasoning controls, and tool_choice, which Ollama's API lacks) may ride here too,
    since Ollama's clients pass options through as they are."""

    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    min_p: float | None = None
    seed: int | None = None
    num_predict: int | None = None
    stop: Annotated[list[StopString], Field(max_length=MAX_STOP_STRINGS)] | None = None
    repeat_penalty: float | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None


class FunctionCall(_Body):
    name: Name
    arguments: dict[str, Any] | str = Field(default_factory=dict)


class ToolCall(_Body):
    function: FunctionCall


class Message(_Body):
    role: Literal["system", "user", "assistant", "tool"]
    content: str = ""
    thinking: str | None = None
    images: list[str] | None = None
    tool_calls: Annotated[list[ToolCall], Field(max_length=MAX_ITEMS)] | None = None
    tool_name: Name | None = None


Think = bool | Literal["low", "medium", "high"] | None
Format = Literal["json", ""] | dict[str, Any] | None


class ChatRequest(_Body):
    model: Name
    messages: Annotated[list[Message], Field(max_length=MAX_ITEMS)] = []
    tools: Annotated[list[dict[str, Any]], Field(max_length=MAX_ITEMS)] | None = None
    format: Format = None
    options: Options | None = None
    stream: bool = True
    think: Think = None
    keep_alive: Any = None


class GenerateRequest(_Body):
    model: Name
    prompt: str = ""
    suffix: str | None = None
    system: str | None = None
    template: str | None = None
    context: list[int] | None = None
    images: list[str] | None = None
    raw: bool = False
    format: Format = None
    options: Options | None = None
    stream: bool = True
    think: Think = None
    keep_alive: Any = None


# -- translation ----------------------------------------------------------------------------------
def _sampling(options: Options | None, think: Think) -> dict[str, Any]:
    """OpenAI-named sampling fields from Ollama's options (num_predict -1/-2: no cap)."""
    o = options or Options()
    extra = o.model_extra or {}
    fields = {**passthrough(extra), "tool_choice": extra.get("tool_choice"),
              "temperature": o.temperature, "top_p": o.top_p, "top_k": o.top_k,
              "min_p": o.min_p, "seed": o.seed, "stop": o.stop,
              "max_tokens": o.num_predict if o.num_predict and o.num_predict > 0 else None,
              "repetition_penalty": o.repeat_penalty, "presence_penalty": o.presence_penalty,
              "frequency_penalty": o.frequency_penalty,
              "reasoning_effort": think if isinstance(think, str) else None}
    return {k: v for k, v in fields.items() if v is not None}


def _response_format(fmt: Format) -> dict[str, Any] | None:
    if fmt == "json":
        return {"type": "json_object"}
    if isinstance(fmt, dict):
        return {"type": "json_schema", "json_schema": {"name": "format", "schema": fmt}}
    return None


def _message(m: Message) -> dict[str, Any]:
    if m.images:
        raise RequestError("images are not supported (this server runs text-only models)",
                           param="messages")
    out: dict[str, Any] = {"role": m.role, "content": m.content}
    if m.thinking:
        out["reasoning_content"] = m.thinking
    if m.tool_calls:
        out["tool_calls"] = [{"id": f"call_{i}", "type": "function", "function": {
            "name": c.function.name, "arguments": c.function.arguments
            if isinstance(c.function.arguments, str) else json.dumps(c.function.arguments)}}
            for i, c in enumerate(m.tool_calls)]
    if m.tool_name:
        out["name"] = m.tool_name
    return out


def chat_of(body: ChatRequest, model: str) -> Any:
    data = {**_sampling(body.options, body.think), "model": model,
            "messages": [_message(m) for m in body.messages], "tools": body.tools,
            "response_format": _response_format(body.format)}
    return chat_request({k: v for k, v in data.items() if v is not None}, body.model_extra)


def generate_chat(body: GenerateRequest, model: str) -> Any:
    messages = [{"role": "system", "content": body.system}] if body.system else []
    messages.append({"role": "user", "content": body.prompt})
    data = {**_sampling(body.options, body.think), "model": model, "messages": messages,
            "response_format": _response_format(body.format), "tool_choice": None}
    return chat_request({k: v for k, v in data.items() if v is not None}, body.model_extra)


def _check_generate(body: GenerateRequest) -> None:
    if body.template is not None:
        raise RequestError("template is not supported: the server renders its model's own chat "
                           "template (send raw: true to write the prompt yourself)",
                           param="template")
    if body.context:
        raise RequestError("context is not supported: send the conversation to /api/chat",
                           param="context")
    if body.images:
        raise RequestError("images are not supported (this server runs text-only models)",
                           param="images")


async def _prompt_run(request: Request, body: GenerateRequest, model: str) -> Run | Response:
    """A raw or fill-in-the-middle prompt: no template, no reasoning split."""
    state = state_of(request)
    tok = state.tokenizer
    ids = fim_ids(tok, body.prompt, body.suffix) if body.suffix is not None \
        else tok.encode(body.prompt, allow_special=True)
    # a raw prompt has no reasoning to conclude: no forced end-of-reasoning marker in code
    sampling = {k: v for k, v in _sampling(body.options, None).items() if k != "tool_choice"}
    fields = validated(CompletionRequest, {"conclude": False, **passthrough(body.model_extra),
                                           **sampling, "prompt": ids, "max_tokens": None})
    asked = sampling.get("max_tokens")
    processors = []
    fmt = _response_format(body.format)
    if fmt is not None:
        schema = fmt.get("json_schema", {}).get("schema")
        processors.append(await anyio.to_thread.run_sync(state.grammars.json_processor, schema))
    params = sampling_params(fields, max_tokens=resolve_max_tokens(
        asked, len(ids), state.max_model_len, "prompt", "options.num_predict"), logprobs=None,
        vocab_size=tok.vocab_size, tenant=tenant_of(request),
        controls=processors)
    return await Run.prompt(request, ids, params, "ollama_generate", model)


# -- the answers ----------------------------------------------------------------------------------
def _now() -> str:
    return datetime.now(timezone.utc).isoformat().replace("+00:00", "Z")


class _Timer:
    """Ollama's durations, in nanoseconds: the prompt's from arrival to the first token (the
    engine's own marks), the answer's from there to the end."""

    def __init__(self) -> None:
        self.start = time.monotonic()

    def stats(self, run: Run) -> dict[str, int]:
        end = time.monotonic()
        marks = run.stream.last.metrics if run.stream.last is not None else {}
        first = marks.get("first_token", end)
        prompt, completion, _ = run.usage()
        return {"total_duration": _ns(end - self.start), "load_duration": 0,
                "prompt_eval_count": prompt,
                "prompt_eval_duration": _ns(first - marks.get("arrival", self.start)),
                "eval_count": completion, "eval_duration": _ns(end - first)}


def _ns(seconds: float) -> int:
    return max(0, int(seconds * 1e9))


def _done_reason(finish: str | None) -> str:
    return "length" if finish == "length" else "stop"


def _tool_calls(calls: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for c in calls:
        try:
            args = json.loads(c["function"]["arguments"] or "{}")
        except json.JSONDecodeError:
            args = {}
        out.append({"function": {"name": c["function"]["name"],
                                 "arguments": args if isinstance(args, dict) else {}}})
    return out


def _shows(think: Think) -> bool:
    return think is not False


def chat_part(model: str, piece: Piece | Answer, think: Think) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": piece.text}
    if piece.reasoning and _shows(think):
        message["thinking"] = piece.reasoning
    if piece.tool_calls:
        message["tool_calls"] = _tool_calls(piece.tool_calls)
    return {"model": model, "created_at": _now(), "message": message, "done": False}


def generate_part(model: str, piece: Piece | Answer, think: Think) -> dict[str, Any]:
    out: dict[str, Any] = {"model": model, "created_at": _now(), "response": piece.text,
                           "done": False}
    if piece.reasoning and _shows(think):
        out["thinking"] = piece.reasoning
    return out


def _loaded(model: str, chat: bool) -> dict[str, Any]:
    """Ollama's answer to an empty request: the model is loaded (it always is here)."""
    body = {"model": model, "created_at": _now(), "done": True, "done_reason": "load"}
    return {**body, "message": {"role": "assistant", "content": ""}} if chat \
        else {**body, "response": ""}


class NDJSONResponse(SSEResponse):
    media_type = "application/x-ndjson"


def _line(data: dict[str, Any]) -> bytes:
    return json.dumps(data, ensure_ascii=False, separators=(",", ":")).encode() + b"\n"


async def _lines(run: Run, part: Any, think: Think, timer: _Timer) -> AsyncIterator[bytes]:
    try:
        async with aclosing(run.pieces()) as pieces:
            async for piece in pieces:
                if piece.text or piece.tool_calls or piece.reasoning and _shows(think):
                    yield _line(part(run.model, piece, think))
                if piece.finish_reason is not None:
                    last = part(run.model, Piece(), think)
                    yield _line({**last, "done": True,
                                 "done_reason": _done_reason(piece.finish_reason),
                                 **timer.stats(run)})
    except APIError as e:
        yield _line({"error": e.message})


async def _answer(request: Request, run: Run | Response, part: Any, think: Think,
                  stream: bool, timer: _Timer) -> Response:
    if isinstance(run, Response):
        return run
    if stream:
        return NDJSONResponse(_lines(run, part, think, timer))
    answer = await run.answer(request)
    if isinstance(answer, Response):
        return answer
    return JSONResponse({**part(run.model, answer, think), "done": True,
                         "done_reason": _done_reason(answer.finish_reason),
                         **timer.stats(run)})


@router.post("/api/chat")
async def chat(body: ChatRequest, request: Request) -> Response:
    state = state_of(request)
    model = served_name(state, body.model)
    if not body.messages:
        return JSONResponse(_loaded(body.model, True))
    state.check_open()
    timer = _Timer()
    run = await Run.chat(request, chat_of(body, model), "ollama_chat")
    if isinstance(run, Run):
        run.model = body.model
    return await _answer(request, run, chat_part, body.think, body.stream, timer)


@router.post("/api/generate")
async def generate(body: GenerateRequest, request: Request) -> Response:
    state = state_of(request)
    model = served_name(state, body.model)
    _check_generate(body)
    if not body.prompt and body.suffix is None:
        return JSONResponse(_loaded(body.model, False))
    state.check_open()
    timer = _Timer()
    if body.raw or body.suffix is not None:
        run = await _prompt_run(request, body, model)
    else:
        run = await Run.chat(request, generate_chat(body, model), "ollama_generate")
    if isinstance(run, Run):
        run.model = body.model
    return await _answer(request, run, generate_part, body.think, body.stream, timer)
