"""The Anthropic Messages answer: content blocks (thinking, text, tool_use), whole or as
Anthropic's streamed events (message_start, content_block_start / _delta / _stop,
message_delta, message_stop; error), and Anthropic's error shape."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import aclosing
from typing import Any

from qwq.server.bridge import Answer, Piece, Run
from qwq.server.errors import APIError

_ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error",
                403: "permission_error", 404: "not_found_error", 413: "request_too_large",
                429: "rate_limit_error", 500: "api_error", 503: "overloaded_error"}


def error_shape(status: int, message: str, param: str | None = None,
                code: str | None = None) -> dict[str, Any]:
    kind = _ERROR_TYPES.get(status, "api_error" if status >= 500 else "invalid_request_error")
    return {"type": "error", "error": {"type": kind, "message": message}}


def stop_reason(stop_sequences: list[str], finish: str | None,
                stop: Any) -> tuple[str, str | None]:
    """(stop_reason, stop_sequence) in Anthropic's words."""
    if finish == "tool_calls":
        return "tool_use", None
    if finish == "length":
        return "max_tokens", None
    if finish == "content_filter":
        return "refusal", None
    if isinstance(stop, str) and stop in stop_sequences:
        return "stop_sequence", stop
    return "end_turn", None


def _tool_input(arguments: str) -> dict[str, Any]:
    try:
        value = json.loads(arguments or "{}")
    except json.JSONDecodeError:
        value = None
    return value if isinstance(value, dict) else {"arguments": arguments}


def _tool_block(call: dict[str, Any], input_: dict[str, Any] | None = None) -> dict[str, Any]:
    fn = call["function"]
    return {"type": "tool_use", "id": call["id"], "name": fn["name"],
            "input": _tool_input(fn["arguments"]) if input_ is None else input_}


def _usage(run: Run) -> dict[str, int]:
    """Anthropic counts prompt tokens read from the cache apart from input_tokens."""
    prompt, completion, cached = run.usage()
    return {"input_tokens": prompt - cached, "output_tokens": completion,
            "cache_read_input_tokens": cached, "cache_creation_input_tokens": 0}


def message(run: Run, msg_id: str, content: list[dict[str, Any]],
            stop: tuple[str | None, str | None]) -> dict[str, Any]:
    return {"id": msg_id, "type": "message", "role": "assistant", "model": run.model,
            "content": content, "stop_reason": stop[0], "stop_sequence": stop[1],
            "usage": _usage(run)}


def content(answer: Answer, thinking: bool) -> list[dict[str, Any]]:
    """A whole answer's blocks; thinking: show the reasoning."""
    blocks: list[dict[str, Any]] = []
    if answer.reasoning and thinking:
        blocks.append({"type": "thinking", "thinking": answer.reasoning, "signature": ""})
    if answer.text:
        blocks.append({"type": "text", "text": answer.text})
    return blocks + [_tool_block(c) for c in answer.tool_calls]


# -- streaming ------------------------------------------------------------------------------------
def event(kind: str, data: dict[str, Any]) -> bytes:
    payload = json.dumps({"type": kind, **data}, ensure_ascii=False, separators=(",", ":"))
    return f"event: {kind}\ndata: {payload}\n\n".encode()


class _Blocks:
    """Content blocks as they stream: one open at a time, a new one whenever the kind of text
    changes (thinking, then text)."""

    def __init__(self) -> None:
        self.index = -1
        self.open: str | None = None

    def delta(self, kind: str, text: str) -> list[bytes]:
        out = []
        if self.open != kind:
            out += self.close()
            self.index += 1
            self.open = kind
            start = {"type": "thinking", "thinking": "", "signature": ""} if kind == "thinking" \
                else {"type": "text", "text": ""}
            out.append(event("content_block_start", {"index": self.index,
                                                     "content_block": start}))
        delta = {"type": "thinking_delta", "thinking": text} if kind == "thinking" \
            else {"type": "text_delta", "text": text}
        out.append(event("content_block_delta", {"index": self.index, "delta": delta}))
        return out

    def close(self) -> list[bytes]:
        if self.open is None:
            return []
        self.open = None
        return [event("content_block_stop", {"index": self.index})]

    def tool(self, call: dict[str, Any]) -> list[bytes]:
        out = self.close()
        self.index += 1
        out.append(event("content_block_start", {"index": self.index,
                                                 "content_block": _tool_block(call, {})}))
        partial = json.dumps(_tool_input(call["function"]["arguments"]), ensure_ascii=False)
        out.append(event("content_block_delta", {"index": self.index, "delta": {
            "type": "input_json_delta", "partial_json": partial}}))
        out.append(event("content_block_stop", {"index": self.index}))
        return out


def _piece_events(blocks: _Blocks, piece: Piece, thinking: bool) -> list[bytes]:
    out = []
    if piece.reasoning and thinking:
        out += blocks.delta("thinking", piece.reasoning)
    if piece.text:
        out += blocks.delta("text", piece.text)
    if piece.finish_reason is not None:
        out += blocks.close()
        for call in piece.tool_calls:
            out += blocks.tool(call)
    return out


async def events(run: Run, msg_id: str, stop_sequences: list[str],
                 thinking: bool) -> AsyncIterator[bytes]:
    """The streamed answer; thinking: stream the reasoning as thinking blocks."""
    yield event("message_start", {"message": message(run, msg_id, [], (None, None))})
    blocks = _Blocks()
    try:
        async with aclosing(run.pieces()) as pieces:
            async for piece in pieces:
                for chunk in _piece_events(blocks, piece, thinking):
                    yield chunk
                if piece.finish_reason is not None:
                    reason, sequence = stop_reason(stop_sequences, piece.finish_reason,
                                                   piece.stop_reason)
                    yield event("message_delta", {
                        "delta": {"stop_reason": reason, "stop_sequence": sequence},
                        "usage": {"output_tokens": run.usage()[1]}})
        yield event("message_stop", {})
    except APIError as e:
        yield event("error", error_shape(e.status, e.message))
