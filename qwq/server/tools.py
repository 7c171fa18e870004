"""Qwen's tool-call format in model output: `<tool_call>\n{"name": ..., "arguments": {...}}
\n</tool_call>`, one block per call, parsed into OpenAI `tool_calls`."""

from __future__ import annotations

import json
import re
import uuid
from typing import Any

OPEN, CLOSE = "<tool_call>", "</tool_call>"
_BLOCK = re.compile(re.escape(OPEN) + r"(.*?)(?:" + re.escape(CLOSE) + r"|\Z)", re.DOTALL)


def _call(payload: str) -> dict[str, Any] | None:
    try:
        data = json.loads(payload)
    except json.JSONDecodeError:
        return None
    if not isinstance(data, dict) or not isinstance(data.get("name"), str):
        return None
    args = data.get("arguments", data.get("parameters", {}))
    arguments = args if isinstance(args, str) else json.dumps(args, ensure_ascii=False)
    return {"id": f"call_{uuid.uuid4().hex[:24]}", "type": "function",
            "function": {"name": data["name"], "arguments": arguments}}


def parse_tool_calls(text: str) -> tuple[str | None, list[dict[str, Any]]]:
    """(content outside the tool-call blocks or None, the calls). A block that is not valid
    JSON with a name stays in the content as it was written."""
    calls: list[dict[str, Any]] = []
    kept: list[str] = []
    end = 0
    for m in _BLOCK.finditer(text):
        call = _call(m.group(1).strip())
        if call is None:
            continue
        kept.append(text[end:m.start()])
        end = m.end()
        calls.append(call)
    kept.append(text[end:])
    content = "".join(kept)
    if calls:
        content = content.strip()
    return (content or None), calls


def _partial_suffix(text: str, marker: str) -> int:
    """Length of the longest end of text that begins marker."""
    for n in range(min(len(marker) - 1, len(text)), 0, -1):
        if marker.startswith(text[-n:]):
            return n
    return 0


class ToolCallStream:
    """Streams content until a tool call starts; from there it holds the text back and,
    when the choice finishes, hands over the parsed calls."""

    def __init__(self) -> None:
        self.sent = ""  # content already streamed
        self.held = ""  # text not streamed yet

    def feed(self, delta: str) -> str:
        """The content that may be streamed now."""
        self.held += delta
        if OPEN in self.sent + self.held:
            return ""
        keep = _partial_suffix(self.held, OPEN)
        out, self.held = self.held[:len(self.held) - keep], self.held[len(self.held) - keep:]
        self.sent += out
        return out

    def finish(self) -> tuple[str, list[dict[str, Any]]]:
        """(content still to stream, tool calls) once the text is complete."""
        held, self.held = self.held, ""
        content, calls = parse_tool_calls(held)
        return (content or "", calls) if calls else (held, [])
