"""Anthropic's Messages API: POST /v1/messages (whole or streamed) and
POST /v1/messages/count_tokens, for clients written against the `anthropic` package.

A request becomes an OpenAI chat request (bridge.chat_request) and runs on the chat route's
path; the answer comes back as content blocks: `thinking` (the model's reasoning), `text`,
`tool_use`. `thinking.budget_tokens` is the thinking budget (max_thinking_tokens); with
`thinking: {"type": "disabled"}` the reasoning is left out of the answer (the model still
reasons: QwQ cannot answer without it). Errors come in Anthropic's shape.
"""

from __future__ import annotations

import json
import uuid
from typing import Annotated, Any, Literal

import anyio
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from qwq.errors import RequestError
from qwq.sampling_params import MAX_STOP_STRINGS
from qwq.server.anthropic_stream import content, error_shape, events, message, stop_reason
from qwq.server.bridge import Run, chat_request
from qwq.server.errors import ERROR_SHAPES
from qwq.server.prompts import encode_messages
from qwq.server.protocol import (
    MAX_ITEMS,
    MAX_TOKENS_BOUND,
    ChatCompletionRequest,
    Name,
    StopString,
)
from qwq.server.sampling import chat_tools
from qwq.server.state import state_of
from qwq.server.streaming import SSEResponse

router = APIRouter()
PATH = "/v1/messages"

ERROR_SHAPES[PATH] = error_shape


# -- the request ----------------------------------------------------------------------------------
class _Body(BaseModel):
    model_config = ConfigDict(extra="allow")  # extras: qwq's reasoning controls (bridge)


class Block(_Body):
    """A content block. One loose type, so an unsupported kind (image, document) gets a clear
    error from the translation instead of a union's list of mismatches."""

    type: Name
    text: str | None = None
    id: Name | None = None
    name: Name | None = None
    input: dict[str, Any] | None = None
    tool_use_id: Name | None = None
    content: str | Annotated[list[Block], Field(max_length=MAX_ITEMS)] | None = None
    is_error: bool = False
    thinking: str | None = None
    signature: str | None = None


Content = str | Annotated[list[Block], Field(max_length=MAX_ITEMS)]


class Message(_Body):
    role: Literal["user", "assistant"]
    content: Content


class Tool(_Body):
    type: Name | None = None
    name: Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_.\-]{1,64}$")]
    description: str | None = None
    input_schema: dict[str, Any] | None = None


class ToolChoice(_Body):
    type: Literal["auto", "any", "tool", "none"]
    name: Name | None = None
    disable_parallel_tool_use: bool = False


class Thinking(_Body):
    type: Literal["enabled", "disabled", "adaptive", "between_tools"]
    budget_tokens: int | None = Field(None, ge=1, le=MAX_TOKENS_BOUND)
    display: Literal["summarized", "omitted"] | None = None


class OutputFormat(_Body):
    type: Literal["json_schema"]
    schema_: dict[str, Any] = Field(alias="schema")


class OutputConfig(_Body):
    effort: Literal["low", "medium", "high", "xhigh", "max"] | None = None
    format: OutputFormat | None = None


class MessagesRequest(_Body):
    model: Name
    max_tokens: int = Field(ge=1, le=MAX_TOKENS_BOUND)
    messages: Annotated[list[Message], Field(min_length=1, max_length=MAX_ITEMS)]
    system: Content | None = None
    stop_sequences: Annotated[list[StopString], Field(max_length=MAX_STOP_STRINGS)] | None = None
    temperature: float | None = Field(None, ge=0.0, le=2.0, allow_inf_nan=False)
    top_p: float | None = Field(None, gt=0.0, le=1.0, allow_inf_nan=False)
    top_k: int | None = Field(None, ge=-1, le=MAX_TOKENS_BOUND)
    tools: Annotated[list[Tool], Field(max_length=MAX_ITEMS)] | None = None
    tool_choice: ToolChoice | None = None
    thinking: Thinking | None = None
    output_config: OutputConfig | None = None
    stream: bool = False
    metadata: dict[str, Any] | None = None


class CountTokensRequest(MessagesRequest):
    max_tokens: int = Field(1, ge=1, le=MAX_TOKENS_BOUND)


# -- translation into an OpenAI chat request ------------------------------------------------------
def _unsupported(block: Block, where: str) -> RequestError:
    return RequestError(f"content blocks of type {block.type!r} are not supported in {where} "
                        "(this server runs text-only models)", param="messages")


def _text(content: Content | None, where: str) -> str:
    if content is None or isinstance(content, str):
        return content or ""
    for b in content:
        if b.type != "text":
            raise _unsupported(b, where)
    return "\n".join(b.text or "" for b in content)


def _user(m: Message) -> list[dict[str, Any]]:
    """A user turn: its tool results (as tool messages, first), then its text."""
    if isinstance(m.content, str):
        return [{"role": "user", "content": m.content}]
    out: list[dict[str, Any]] = []
    texts = []
    for b in m.content:
        if b.type == "tool_result":
            result = _text(b.content, "tool results")
            out.append({"role": "tool", "tool_call_id": b.tool_use_id,
                        "content": f"Error: {result}" if b.is_error else result})
        elif b.type == "text":
            texts.append(b.text or "")
        else:
            raise _unsupported(b, "user messages")
    if texts:
        out.append({"role": "user", "content": "\n".join(texts)})
    return out


def _assistant(m: Message) -> dict[str, Any]:
    """An assistant turn: thinking becomes reasoning_content, tool_use becomes tool_calls."""
    if isinstance(m.content, str):
        return {"role": "assistant", "content": m.content}
    texts, thoughts, calls = [], [], []
    for b in m.content:
        if b.type == "text":
            texts.append(b.text or "")
        elif b.type == "thinking":
            thoughts.append(b.thinking or "")
        elif b.type == "tool_use":
            calls.append({"id": b.id, "type": "function", "function": {
                "name": b.name or "", "arguments": json.dumps(b.input or {})}})
        elif b.type != "redacted_thinking":
            raise _unsupported(b, "assistant messages")
    msg: dict[str, Any] = {"role": "assistant", "content": "".join(texts)}
    if thoughts:
        msg["reasoning_content"] = "\n".join(thoughts)
    if calls:
        msg["tool_calls"] = calls
    return msg


def _tool_choice(choice: ToolChoice | None) -> Any:
    if choice is None:
        return None
    if choice.type == "tool":
        if not choice.name:
            raise RequestError("tool_choice type 'tool' needs a name", param="tool_choice.name")
        return {"type": "function", "function": {"name": choice.name}}
    return {"auto": "auto", "any": "required", "none": "none"}[choice.type]


def _tools(tools: list[Tool] | None) -> list[dict[str, Any]] | None:
    if not tools:
        return None
    for t in tools:
        if t.type not in (None, "custom"):
            raise RequestError(f"tool type {t.type!r} is not supported: only client tools "
                               "(name, description, input_schema)", param="tools")
    return [{"type": "function", "function": {"name": t.name, "description": t.description,
                                              "parameters": t.input_schema}} for t in tools]


def to_chat(body: MessagesRequest) -> ChatCompletionRequest:
    """The OpenAI chat request that asks the same of the model."""
    messages = [{"role": "system", "content": _text(body.system, "the system prompt")}] \
        if body.system else []
    for m in body.messages:
        messages += _user(m) if m.role == "user" else [_assistant(m)]
    prefill = body.messages[-1].role == "assistant"  # Anthropic's prefill: continue that text
    data: dict[str, Any] = {
        "model": body.model, "messages": messages, "max_tokens": body.max_tokens,
        "temperature": body.temperature, "top_p": body.top_p, "top_k": body.top_k,
        "stop": body.stop_sequences, "tools": _tools(body.tools),
        "tool_choice": _tool_choice(body.tool_choice) if body.tools else None,
        "continue_final_message": prefill, "add_generation_prompt": not prefill}
    data.update(_output_config(body))
    return chat_request({k: v for k, v in data.items() if v is not None}, body.model_extra)


# Anthropic's efforts beyond "high" get qwq's largest budget
_EFFORTS = {"low": "low", "medium": "medium", "high": "high", "xhigh": "high", "max": "high"}


def _output_config(body: MessagesRequest) -> dict[str, Any]:
    """The thinking budget (budget_tokens, else the effort's) and a JSON schema to follow."""
    out: dict[str, Any] = {}
    thinking, config = body.thinking, body.output_config
    if thinking is not None and thinking.type == "enabled" and thinking.budget_tokens:
        out["max_thinking_tokens"] = thinking.budget_tokens
    if config is not None and config.effort:
        out["reasoning_effort"] = _EFFORTS[config.effort]
    if config is not None and config.format is not None:
        out["response_format"] = {"type": "json_schema", "json_schema": {
            "name": "output", "schema": config.format.schema_}}
    return out


# -- the answer -----------------------------------------------------------------------------------
def _shows_thinking(body: MessagesRequest) -> bool:
    thinking = body.thinking
    return thinking is None or thinking.type != "disabled" and thinking.display != "omitted"


@router.post(PATH)
async def create_message(body: MessagesRequest, request: Request) -> Response:
    run = await Run.chat(request, to_chat(body), "anthropic_messages")
    if isinstance(run, Response):
        return run
    msg_id = f"msg_{uuid.uuid4().hex[:24]}"
    stops = body.stop_sequences or []
    if body.stream:
        return SSEResponse(events(run, msg_id, stops, _shows_thinking(body)))
    answer = await run.answer(request)
    if isinstance(answer, Response):
        return answer
    stop = stop_reason(stops, answer.finish_reason, answer.stop_reason)
    return JSONResponse(message(run, msg_id, content(answer, _shows_thinking(body)), stop))


@router.post(PATH + "/count_tokens")
async def count_tokens(body: CountTokensRequest, request: Request) -> dict[str, int]:
    state = state_of(request)
    state.model_name(body.model)
    chat = to_chat(body)
    ids = await anyio.to_thread.run_sync(encode_messages, state, chat, chat_tools(chat))
    return {"input_tokens": len(ids)}
