"""The Responses API's answer: output items, whole or as the streamed events clients expect
(response.created, response.output_item.added, response.content_part.added,
response.reasoning_text.delta / response.output_text.delta, their .done events,
response.function_call_arguments.delta, response.completed or response.incomplete)."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import aclosing
from typing import Any

from qwq.server.bridge import Answer, Run
from qwq.server.errors import APIError


def new_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex}"


def reasoning_item(item_id: str, text: str, status: str = "completed") -> dict[str, Any]:
    return {"type": "reasoning", "id": item_id, "summary": [], "status": status,
            "content": [{"type": "reasoning_text", "text": text}] if text else []}


def message_item(item_id: str, text: str | None, status: str = "completed") -> dict[str, Any]:
    content = [] if text is None else [{"type": "output_text", "text": text, "annotations": [],
                                        "logprobs": []}]
    return {"type": "message", "id": item_id, "role": "assistant", "status": status,
            "content": content}


def call_item(item_id: str, call: dict[str, Any], status: str = "completed",
              arguments: str | None = None) -> dict[str, Any]:
    fn = call["function"]
    return {"type": "function_call", "id": item_id, "call_id": call["id"], "name": fn["name"],
            "arguments": fn["arguments"] if arguments is None else arguments, "status": status}


def output_items(answer: Answer) -> list[dict[str, Any]]:
    """The whole answer's items: reasoning, then the message (also when empty, unless the
    answer is only tool calls), then the function calls. The last is incomplete when the
    answer was cut short."""
    items = [reasoning_item(new_id("rs"), answer.reasoning)] if answer.reasoning else []
    if answer.text or not answer.tool_calls:
        items.append(message_item(new_id("msg"), answer.text))
    items += [call_item(new_id("fc"), c) for c in answer.tool_calls]
    items[-1]["status"] = ending(answer.finish_reason)[0]
    return items


def ending(finish_reason: str | None) -> tuple[str, dict[str, str] | None]:
    """(status, incomplete_details) for how the answer ended."""
    if finish_reason == "length":
        return "incomplete", {"reason": "max_output_tokens"}
    if finish_reason == "content_filter":
        return "incomplete", {"reason": "content_filter"}
    return "completed", None


def usage(run: Run, reasoning_tokens: int) -> dict[str, Any]:
    prompt, completion, cached = run.usage()
    return {"input_tokens": prompt,
            "input_tokens_details": {"cached_tokens": cached, "cache_write_tokens": 0},
            "output_tokens": completion,
            "output_tokens_details": {"reasoning_tokens": reasoning_tokens},
            "total_tokens": prompt + completion}


# -- streaming ------------------------------------------------------------------------------------
class _Emitter:
    """Server-sent events, each with the next sequence_number."""

    def __init__(self) -> None:
        self.sequence = 0

    def __call__(self, kind: str, **data: Any) -> bytes:
        payload = json.dumps({"type": kind, "sequence_number": self.sequence, **data},
                             ensure_ascii=False, separators=(",", ":"))
        self.sequence += 1
        return f"event: {kind}\ndata: {payload}\n\n".encode()


_PARTS = {"reasoning": {"type": "reasoning_text", "text": ""},
          "message": {"type": "output_text", "text": "", "annotations": [], "logprobs": []}}


class _Items:
    """Output items as they stream: one text item (reasoning or message) open at a time."""

    def __init__(self, emit: _Emitter) -> None:
        self.emit = emit
        self.done: list[dict[str, Any]] = []
        self.kind: str | None = None
        self.item_id = ""
        self.text = ""

    def _where(self) -> dict[str, Any]:
        return {"item_id": self.item_id, "output_index": len(self.done), "content_index": 0}

    def _item(self, status: str) -> dict[str, Any]:
        if self.kind == "reasoning":
            return reasoning_item(self.item_id, self.text if status == "completed" else "",
                                  status)
        return message_item(self.item_id, self.text if status == "completed" else None, status)

    def open(self, kind: str) -> list[bytes]:
        if self.kind == kind:
            return []
        out = self.close()
        self.kind, self.item_id, self.text = kind, new_id("rs" if kind == "reasoning"
                                                          else "msg"), ""
        out.append(self.emit("response.output_item.added", output_index=len(self.done),
                             item=self._item("in_progress")))
        out.append(self.emit("response.content_part.added", part=_PARTS[kind],
                             **self._where()))
        return out

    def delta(self, kind: str, text: str) -> list[bytes]:
        out = self.open(kind)
        self.text += text
        if kind == "reasoning":
            out.append(self.emit("response.reasoning_text.delta", delta=text, **self._where()))
        else:
            out.append(self.emit("response.output_text.delta", delta=text, logprobs=[],
                                 **self._where()))
        return out

    def close(self, status: str = "completed") -> list[bytes]:
        if self.kind is None:
            return []
        if self.kind == "reasoning":
            out = [self.emit("response.reasoning_text.done", text=self.text, **self._where())]
            part = {"type": "reasoning_text", "text": self.text}
        else:
            out = [self.emit("response.output_text.done", text=self.text, logprobs=[],
                             **self._where())]
            part = {**_PARTS["message"], "text": self.text}
        out.append(self.emit("response.content_part.done", part=part, **self._where()))
        item = {**self._item("completed"), "status": status}
        out.append(self.emit("response.output_item.done", output_index=len(self.done),
                             item=item))
        self.done.append(item)
        self.kind = None
        return out

    def call(self, call: dict[str, Any]) -> list[bytes]:
        out = self.close()
        item_id, index = new_id("fc"), len(self.done)
        where = {"item_id": item_id, "output_index": index}
        out.append(self.emit("response.output_item.added", output_index=index,
                             item=call_item(item_id, call, "in_progress", "")))
        arguments = call["function"]["arguments"]
        out.append(self.emit("response.function_call_arguments.delta", delta=arguments,
                             **where))
        out.append(self.emit("response.function_call_arguments.done", arguments=arguments,
                             **where))
        item = call_item(item_id, call)
        out.append(self.emit("response.output_item.done", output_index=index, item=item))
        self.done.append(item)
        return out

    def has_message(self) -> bool:
        return self.kind == "message" or any(i["type"] == "message" for i in self.done)


async def events(run: Run, response: Callable[..., dict[str, Any]]) -> AsyncIterator[bytes]:
    """The streamed answer; response(**state) builds the response resource."""
    emit = _Emitter()
    items = _Items(emit)
    yield emit("response.created", response=response())
    yield emit("response.in_progress", response=response())
    reasoning_tokens = 0
    try:
        async with aclosing(run.pieces()) as pieces:
            async for piece in pieces:
                reasoning_tokens += piece.reasoning_tokens
                chunks = items.delta("reasoning", piece.reasoning) if piece.reasoning else []
                chunks += items.delta("message", piece.text) if piece.text else []
                if piece.finish_reason is not None:
                    status, incomplete = ending(piece.finish_reason)
                    if not piece.tool_calls and not items.has_message():
                        chunks += items.open("message")  # an empty answer is an empty message
                    chunks += items.close("completed" if piece.tool_calls else status)
                    for call in piece.tool_calls:
                        chunks += items.call(call)
                    final = response(status=status, incomplete_details=incomplete,
                                     output=items.done, usage=usage(run, reasoning_tokens))
                    kind = "response.completed" if status == "completed" \
                        else "response.incomplete"
                    chunks.append(emit(kind, response=final))
                for chunk in chunks:
                    yield chunk
    except APIError as e:
        yield emit("error", code=e.code, message=e.message, param=e.param)
