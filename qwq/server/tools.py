"""Qwen's tool-call format in model output: `<tool_call>\n{"name": ..., "arguments": {...}}
\n</tool_call>`, one block per call, parsed into OpenAI `tool_calls`.

Calls stream as OpenAI streams them: once a block's name is written, a delta with the call's
index, id, type and name (arguments ""); then the arguments' JSON text in fragments, exactly as
the model writes it. A whole answer is parsed by the same stream, so both give the same calls.
"""

from __future__ import annotations

import json
import re
import uuid
from typing import Any

OPEN, CLOSE = "<tool_call>", "</tool_call>"
# A block that begins with its name and then its arguments, as Qwen's template asks: the name
# can be announced before the arguments are written
_HEAD = re.compile(r'\s*\{\s*"name"\s*:\s*("(?:[^"\\]|\\.)*")\s*,\s*"(?:arguments|parameters)"'
                   r"\s*:\s*")


def _partial_suffix(text: str, marker: str) -> int:
    """Length of the longest end of text that begins marker."""
    for n in range(min(len(marker) - 1, len(text)), 0, -1):
        if marker.startswith(text[-n:]):
            return n
    return 0


def _new_id() -> str:
    return f"call_{uuid.uuid4().hex[:24]}"


def _whole_call(payload: str) -> tuple[str, str] | None:
    """(name, arguments) of a complete block in any key order, or None if it is not a call."""
    try:
        data = json.loads(payload)
    except json.JSONDecodeError:
        return None
    if not isinstance(data, dict) or not isinstance(data.get("name"), str):
        return None
    args = data.get("arguments", data.get("parameters", {}))
    return data["name"], args if isinstance(args, str) else json.dumps(args, ensure_ascii=False)


class _JsonValue:
    """Finds where a JSON object or array ends as its text arrives: depth and string state."""

    def __init__(self) -> None:
        self.depth = 0
        self.in_string = self.escaped = False
        self.done = self.broken = False

    def scan(self, text: str) -> int:
        """How many characters of text belong to the value (all of them while it goes on)."""
        for i, ch in enumerate(text):
            if self.in_string:
                if self.escaped:
                    self.escaped = False
                elif ch == "\\":
                    self.escaped = True
                elif ch == '"':
                    self.in_string = False
                continue
            if ch == '"':
                self.in_string = True
            elif ch in "{[":
                self.depth += 1
            elif ch in "}]":
                self.depth -= 1
                if self.depth == 0:
                    self.done = True
                    return i + 1
            elif ch == "<":  # no JSON has this outside a string: a closing tag came early
                self.broken = True
                return i
        return len(text)


class _Block:
    """One `<tool_call>` block being written."""

    def __init__(self, index: int) -> None:
        self.index = index
        self.text = ""  # after OPEN
        self.name: str | None = None
        self.args_at = 0  # where the arguments' text begins in self.text
        self.args_sent = 0  # how much of it has been streamed
        self.value: _JsonValue | None = None  # None: arguments are not an object or array

    def deltas(self) -> list[dict[str, Any]]:
        """What can be streamed now: the head once the name is known, argument fragments."""
        out = []
        if self.name is None:
            if not self._head():
                return []
            out.append({"index": self.index, "id": _new_id(), "type": "function",
                        "function": {"name": self.name, "arguments": ""}})
        if self.value is None and self.args_sent == 0:
            while self.args_at < len(self.text) and self.text[self.args_at].isspace():
                self.args_at += 1
            if self.args_at == len(self.text) or self.text[self.args_at] not in "{[":
                return out  # not begun yet, or a string or a number: parsed whole at the end
            self.value = _JsonValue()
        if self.value is not None and not (self.value.done or self.value.broken):
            start = self.args_at + self.args_sent
            n = self.value.scan(self.text[start:])
            if n:
                self.args_sent += n
                out.append({"index": self.index, "function": {"arguments": self.text[start:
                                                                                     start + n]}})
        return out

    def _head(self) -> bool:
        m = _HEAD.match(self.text)
        if m is None:
            return False
        try:
            self.name = json.loads(m.group(1))
        except json.JSONDecodeError:  # a bad escape in the name: judged whole at the end
            return False
        self.args_at = m.end()
        return True

    def close(self, closed: bool) -> tuple[list[dict[str, Any]], str | None]:
        """At `</tool_call>` (closed) or the end of the answer: the deltas still owed, or the
        block's text back as content (None) when it never was a call."""
        if self.name is None:
            call = _whole_call(self.text.strip())
            if call is None:
                return [], OPEN + self.text + (CLOSE if closed else "")
            name, args = call
            return [{"index": self.index, "id": _new_id(), "type": "function",
                     "function": {"name": name, "arguments": args}}], None
        if self.value is None:  # the arguments were a string or a number
            call = _whole_call(self.text.strip())
            args = call[1] if call else self.text[self.args_at:].strip()  # cut off: as written
            return [{"index": self.index, "function": {"arguments": args}}], None
        return [], None


class ToolCallStream:
    """Content until a tool call starts; then the call's deltas as they are written. finish()
    settles what is left when the choice ends. calls holds every call so far, merged."""

    def __init__(self) -> None:
        self.held = ""  # content that may be the start of OPEN
        self.block: _Block | None = None
        self.calls: list[dict[str, Any]] = []

    def feed(self, delta: str) -> tuple[str, list[dict[str, Any]]]:
        """(content to stream now, tool-call deltas to stream now)."""
        return self._run(delta, final=False)

    def finish(self) -> tuple[str, list[dict[str, Any]]]:
        return self._run("", final=True)

    def _run(self, delta: str, final: bool) -> tuple[str, list[dict[str, Any]]]:
        text, content, deltas = self.held + delta, [], []
        self.held = ""
        while text:
            if self.block is None:
                text = self._content(text, final, content)
            else:
                text = self._in_block(text, content, deltas)
        if final and self.block is not None:
            content.append(self._close(deltas, closed=False))
        return "".join(content), deltas

    def _content(self, text: str, final: bool, content: list[str]) -> str:
        at = text.find(OPEN)
        if at < 0:
            keep = 0 if final else _partial_suffix(text, OPEN)
            content.append(text[:len(text) - keep])
            self.held = text[len(text) - keep:]
            return ""
        content.append(text[:at])
        self.block = _Block(len(self.calls))
        return text[at + len(OPEN):]

    def _in_block(self, text: str, content: list[str], deltas: list[dict[str, Any]]) -> str:
        block = self.block
        before = len(block.text)
        block.text += text
        end = block.text.find(CLOSE, max(0, before - len(CLOSE)))
        if end < 0:
            self._take(block.deltas(), deltas)
            return ""
        rest = block.text[end + len(CLOSE):]
        block.text = block.text[:end]
        self._take(block.deltas(), deltas)
        content.append(self._close(deltas, closed=True))
        return rest

    def _close(self, deltas: list[dict[str, Any]], closed: bool) -> str:
        owed, back = self.block.close(closed)
        self._take(owed, deltas)
        self.block = None
        return back or ""

    def _take(self, new: list[dict[str, Any]], deltas: list[dict[str, Any]]) -> None:
        for d in new:
            deltas.append(d)
            if "id" in d:
                self.calls.append({"id": d["id"], "type": "function",
                                   "function": dict(d["function"])})
            else:
                self.calls[d["index"]]["function"]["arguments"] += d["function"]["arguments"]


def parse_tool_calls(text: str) -> tuple[str | None, list[dict[str, Any]]]:
    """(content outside the tool-call blocks or None, the calls), by the stream's own rules. A
    block that never becomes a call stays in the content as it was written."""
    stream = ToolCallStream()
    c1, _ = stream.feed(text)
    c2, _ = stream.finish()
    content = c1 + c2
    if stream.calls:
        content = content.strip()
    return (content or None), stream.calls
