"""OpenAI's Responses API, stateless: POST /v1/responses, whole or streamed, for clients that use
`client.responses.create` / `client.responses.stream`.

The request (input as text or items, instructions, tools, reasoning.effort, max_output_tokens,
text.format) becomes a chat request (bridge.chat_request) and runs on the chat route's path.
The answer is a list of output items: a `reasoning` item (the model's reasoning as
reasoning_text), a `message` with output_text, and `function_call`s. Nothing is stored:
previous_response_id and conversation are refused, and the response says store: false.
"""

from __future__ import annotations

import time
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field

from qwq.errors import RequestError
from qwq.server.bridge import Run, chat_request
from qwq.server.protocol import (
    MAX_ITEMS,
    MAX_TOKENS_BOUND,
    ChatCompletionRequest,
    FunctionFields,
    FunctionName,
    Name,
)
from qwq.server.responses_stream import ending, events, new_id, output_items, usage
from qwq.server.streaming import SSEResponse

router = APIRouter()


# -- the request ----------------------------------------------------------------------------------
class _Body(BaseModel):
    model_config = ConfigDict(extra="allow")  # extras: qwq's reasoning controls (bridge)


class Part(_Body):
    type: Name
    text: str | None = None


Parts = Annotated[list[Part], Field(max_length=MAX_ITEMS)]


class Item(_Body):
    """An input item. One loose type, so an unsupported kind gets a clear error."""

    type: Name | None = None  # absent: a message
    role: Literal["user", "assistant", "system", "developer"] | None = None
    content: str | Parts | None = None
    call_id: Name | None = None
    name: Name | None = None
    arguments: str | None = None
    output: str | Parts | None = None
    summary: Parts | None = None


class FunctionTool(_Body, FunctionFields):
    """A tool, flat: any type, and a function's fields beside it (the name optional, so a tool
    that is not a function gets a clear error)."""

    type: Name
    name: FunctionName | None = None


class NamedChoice(_Body):
    type: Literal["function"]
    name: Name


class Reasoning(_Body):
    effort: Literal["none", "minimal", "low", "medium", "high", "xhigh"] | None = None
    summary: str | None = None


class TextFormat(_Body):
    type: Literal["text", "json_object", "json_schema"]
    name: Name = "response"
    schema_: dict[str, Any] | None = Field(None, alias="schema")
    strict: bool | None = None


class TextConfig(_Body):
    format: TextFormat | None = None


class ResponsesRequest(_Body):
    model: Name | None = None
    input: str | Annotated[list[Item], Field(min_length=1, max_length=MAX_ITEMS)]
    instructions: str | None = None
    tools: Annotated[list[FunctionTool], Field(max_length=MAX_ITEMS)] | None = None
    tool_choice: Literal["auto", "none", "required"] | NamedChoice | None = None
    parallel_tool_calls: bool = True
    reasoning: Reasoning | None = None
    max_output_tokens: int | None = Field(None, ge=1, le=MAX_TOKENS_BOUND)
    temperature: float | None = Field(None, ge=0.0, le=2.0, allow_inf_nan=False)
    top_p: float | None = Field(None, gt=0.0, le=1.0, allow_inf_nan=False)
    text: TextConfig | None = None
    stream: bool = False
    store: bool | None = None
    metadata: dict[str, Any] | None = None
    previous_response_id: Name | None = None
    conversation: Any = None


# -- translation into an OpenAI chat request ------------------------------------------------------
_TEXT_PARTS = ("input_text", "output_text", "text", "refusal", "reasoning_text", "summary_text")


def _text(content: str | list[Part] | None) -> str:
    if content is None or isinstance(content, str):
        return content or ""
    for p in content:
        if p.type not in _TEXT_PARTS:
            raise RequestError(f"content parts of type {p.type!r} are not supported (this "
                               "server runs text-only models)", param="input")
    return "\n".join(p.text or "" for p in content)


class _Conversation:
    """Input items folded into chat messages: function calls join the assistant turn they
    belong to, a reasoning item goes with the assistant turn that follows it."""

    def __init__(self) -> None:
        self.messages: list[dict[str, Any]] = []
        self.reasoning: str | None = None

    def assistant(self) -> dict[str, Any]:
        last = self.messages[-1] if self.messages else None
        if last is None or last["role"] != "assistant" or self.reasoning is not None:
            last = {"role": "assistant", "content": ""}
            if self.reasoning is not None:
                last["reasoning_content"], self.reasoning = self.reasoning, None
            self.messages.append(last)
        return last

    def add(self, item: Item) -> None:
        kind = item.type or "message"
        if kind == "message":
            if item.role == "assistant":
                self.assistant()["content"] += _text(item.content)
            else:
                self.messages.append({"role": item.role or "user", "content": _text(item.content)})
        elif kind == "function_call":
            self.assistant().setdefault("tool_calls", []).append({
                "id": item.call_id, "type": "function",
                "function": {"name": item.name or "", "arguments": item.arguments or ""}})
        elif kind == "function_call_output":
            self.messages.append({"role": "tool", "tool_call_id": item.call_id,
                                  "content": _text(item.output)})
        elif kind == "reasoning":
            self.reasoning = _text(item.content) or _text(item.summary)
        else:
            raise RequestError(f"input items of type {kind!r} are not supported", param="input")


def _tools(body: ResponsesRequest) -> list[dict[str, Any]] | None:
    if not body.tools:
        return None
    for t in body.tools:
        if t.type != "function" or not t.name:
            raise RequestError(f"tools of type {t.type!r} are not supported: only functions "
                               "(type, name, description, parameters)", param="tools")
    return [{"type": "function", "function": {"name": t.name, "description": t.description,
                                              "parameters": t.parameters, "strict": t.strict}}
            for t in body.tools]


def _tool_choice(choice: Any) -> Any:
    if isinstance(choice, NamedChoice):
        return {"type": "function", "function": {"name": choice.name}}
    return choice


def _response_format(body: ResponsesRequest) -> dict[str, Any] | None:
    fmt = body.text.format if body.text else None
    if fmt is None or fmt.type == "text":
        return None
    if fmt.type == "json_object":
        return {"type": "json_object"}
    return {"type": "json_schema", "json_schema": {"name": fmt.name, "schema": fmt.schema_}}


# qwq's budgets are low / medium / high; "none" and "minimal" get the smallest (QwQ always
# reasons), "xhigh" the largest
_EFFORTS = {"none": "low", "minimal": "low", "low": "low", "medium": "medium", "high": "high",
            "xhigh": "high"}


def to_chat(body: ResponsesRequest) -> ChatCompletionRequest:
    """The OpenAI chat request that asks the same of the model."""
    if body.previous_response_id is not None or body.conversation is not None:
        raise RequestError("this server keeps no responses (stateless): send the whole "
                           "conversation as input instead of previous_response_id or "
                           "conversation", param="previous_response_id")
    conv = _Conversation()
    if body.instructions:
        conv.messages.append({"role": "system", "content": body.instructions})
    items = [Item(role="user", content=body.input)] if isinstance(body.input, str) \
        else body.input
    for item in items:
        conv.add(item)
    effort = body.reasoning.effort if body.reasoning else None
    data = {"model": body.model, "messages": conv.messages,
            "max_tokens": body.max_output_tokens, "temperature": body.temperature,
            "top_p": body.top_p, "tools": _tools(body),
            "tool_choice": _tool_choice(body.tool_choice) if body.tools else None,
            "parallel_tool_calls": body.parallel_tool_calls,
            "response_format": _response_format(body),
            "reasoning_effort": _EFFORTS[effort] if effort else None}
    return chat_request({k: v for k, v in data.items() if v is not None}, body.model_extra)


# -- the answer -----------------------------------------------------------------------------------
def response_object(body: ResponsesRequest, run: Run, resp_id: str, created: float,
                    **state: Any) -> dict[str, Any]:
    """The response resource; state: status, output, incomplete_details, usage."""
    text = body.text.model_dump(by_alias=True, exclude_none=True) if body.text and \
        body.text.format else {"format": {"type": "text"}}
    return {"id": resp_id, "object": "response", "created_at": created, "model": run.model,
            "status": "in_progress", "output": [], "incomplete_details": None, "usage": None,
            "error": None, "instructions": body.instructions,
            "max_output_tokens": body.max_output_tokens,
            "parallel_tool_calls": body.parallel_tool_calls, "previous_response_id": None,
            "reasoning": {"effort": body.reasoning.effort if body.reasoning else None,
                          "summary": None},
            "store": False, "temperature": body.temperature, "top_p": body.top_p, "text": text,
            "tool_choice": body.tool_choice.model_dump() if isinstance(body.tool_choice,
                                                                       NamedChoice)
            else body.tool_choice or "auto",
            "tools": [t.model_dump(exclude_none=True) for t in body.tools or []],
            "truncation": "disabled", "metadata": body.metadata or {}, **state}


@router.post("/v1/responses")
async def create_response(body: ResponsesRequest, request: Request) -> Response:
    run = await Run.chat(request, to_chat(body), "responses")
    if isinstance(run, Response):
        return run
    resp_id, created = new_id("resp"), time.time()
    if body.stream:
        return SSEResponse(events(run, lambda **s: response_object(body, run, resp_id, created,
                                                                   **s)))
    answer = await run.answer(request)
    if isinstance(answer, Response):
        return answer
    status, incomplete = ending(answer.finish_reason)
    return JSONResponse(response_object(body, run, resp_id, created, status=status,
                                        incomplete_details=incomplete,
                                        output=output_items(answer),
                                        usage=usage(run, answer.reasoning_tokens)))
