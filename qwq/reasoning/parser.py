"""Split a reasoning model's answer into reasoning, content and a final answer.

Two styles:
- "think": reasoning wrapped in `<think>…</think>` (QwQ-32B, DeepSeek-R1-Distill-Qwen). Their
  chat templates often open `<think>` in the prompt, so the output may hold only `</think>`.
- "plain": QwQ-32B-Preview's plain-text reasoning that ends in a final-answer section
  (`**Final Answer**`), usually with `\\boxed{...}`.

One rule serves streams and whole answers, and a stream can apply it without seeing the future:
the answer starts at the *first* end-of-reasoning marker (`</think>`; in the plain style a
final-answer heading in any case; with tools offered, a `<tool_call>`, which stays in the
answer). Text before it is reasoning, everything after it is content, a second heading
included: a streamed delta cannot be taken back, and OpenAI's stream has no way to move text
from content into reasoning. The final answer is the last `\\boxed{}` of the content, so a model
that revises its answer under a second heading still reports the last one. No marker at all
means the answer never started: all reasoning, empty content. Both parts are stripped of the
whitespace around them (a stream holds trailing spaces back until more text follows).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

THINK_OPEN = "<think>"
THINK_CLOSE = "</think>"
TOOL_CALL_OPEN = "<tool_call>"
# Headings that open QwQ-32B-Preview's final-answer section; matched in any case
FINAL_ANSWER_HEADINGS = ("**Final Answer**", "**Final Answer:**", "**Final Answer**:",
                         "### Final Answer", "### Final Answer:", "## Final Answer",
                         "## Final Answer:")
STYLES = ("think", "plain")
_FOLD = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")


@dataclass(frozen=True)
class Marker:
    text: str  # lower case when fold
    ends_reasoning: bool  # False: the `<think>` that opens it
    keep: bool = False  # the marker is part of the answer (a tool call), not dropped
    fold: bool = False  # matched in any case (ASCII): the headings are written both ways


OPEN = Marker(THINK_OPEN, ends_reasoning=False)
CLOSE = Marker(THINK_CLOSE, ends_reasoning=True)
TOOL = Marker(TOOL_CALL_OPEN, ends_reasoning=True, keep=True)
HEADINGS = tuple(Marker(h.translate(_FOLD), ends_reasoning=True, fold=True)
                 for h in FINAL_ANSWER_HEADINGS)
_FIRST_CHARS = re.compile("[" + re.escape("".join({m.text[0] for m in
                                                   (OPEN, CLOSE, TOOL, *HEADINGS)})) + "]")


@dataclass
class ParsedAnswer:
    reasoning: str | None  # None when the text has no reasoning part
    content: str
    final_answer: str | None  # the last \boxed{...}, braces balanced, when there is one


class _Part:
    """One side of the split as it streams: leading whitespace dropped, trailing whitespace
    held until more text follows (so it is dropped where the part ends)."""

    def __init__(self) -> None:
        self.started = False
        self.held = ""

    def take(self, text: str) -> str:
        if not self.started:
            text = text.lstrip()
            if not text:
                return ""
            self.started = True
        text = self.held + text
        body = text.rstrip()
        self.held = text[len(body):]
        return body


class ReasoningStreamer:
    """The split, applied to text as it arrives: feed() each delta, finish() at the end; each
    returns the (reasoning, content) text it settles. Text that may be the start of a marker is
    held back until the next delta decides.

    in_reasoning: the prompt already opened the reasoning (a template that ends in `<think>`;
    the plain style always is). tools: the request offers tools, so a `<tool_call>` also ends
    the reasoning. reasoning_ended answers "has the answer started?" as soon as an ending
    marker is complete (vLLM's is_reasoning_end), even while a longer form of it (a heading
    with a colon) is still undecided; answer_offset is then where, in characters fed, the answer
    may start (past the marker's shortest form; at a kept marker, its first character).
    """

    def __init__(self, style: str = "think", in_reasoning: bool = False, tools: bool = False):
        if style not in STYLES:
            raise ValueError(f"style must be one of {STYLES}, got {style!r}")
        self.style, self.tools = style, tools
        self.in_reasoning = in_reasoning or style == "plain"
        self.reasoning_ended = False
        self.answer_offset: int | None = None
        self.answer_kept = False  # the marker that ended it is part of the answer
        self._done = False  # the marker has been passed: everything now is content
        self._opened = False  # non-space text or <think> seen: a later <think> is text
        self._buf = ""
        self._fed = 0
        self._reasoning, self._content = _Part(), _Part()

    def split(self, text: str) -> tuple[str, str]:
        """(reasoning, content) of a whole answer: exactly what streaming it gives."""
        r1, c1 = self.feed(text)
        r2, c2 = self.finish()
        return r1 + r2, c1 + c2

    def feed(self, delta: str) -> tuple[str, str]:
        return self._run(delta, final=False)

    def finish(self) -> tuple[str, str]:
        return self._run("", final=True)

    def _run(self, delta: str, final: bool) -> tuple[str, str]:
        self._buf += delta
        self._fed += len(delta)
        out: tuple[list[str], list[str]] = ([], [])
        while True:
            start, marker = self._next(final)
            self._put(self._buf[:start], out)
            self._buf = self._buf[start:]
            if marker is None:
                return "".join(out[0]), "".join(out[1])
            self._pass(marker)

    def _markers(self) -> tuple[Marker, ...]:
        if self._done:
            return ()
        tool = (TOOL,) if self.tools else ()
        if self.style == "plain":
            return HEADINGS + tool
        opening = () if self._opened else (OPEN,)
        return opening + ((CLOSE,) + tool if self.in_reasoning else ())

    def _next(self, final: bool) -> tuple[int, Marker | None]:
        """(i, marker) for the first marker, at i; (i, None) when text from i on may still
        become one (hold it), or i = len(buffer) when none can begin anywhere."""
        markers = self._markers()
        if not markers:
            return len(self._buf), None
        buf, low = self._buf, self._buf.translate(_FOLD)
        open_at = len(buf) - len(buf.lstrip())  # <think> counts only before any other text
        for m in _FIRST_CHARS.finditer(buf):
            i = m.start()
            allowed = [k for k in markers if k is not OPEN or i == open_at]
            text = {k: (low if k.fold else buf)[i:] for k in allowed}
            full = [k for k in allowed if text[k].startswith(k.text)]
            longer = not final and any(len(k.text) > len(text[k]) and k.text.startswith(text[k])
                                       for k in allowed)
            best = max(full, key=lambda k: len(k.text), default=None)
            if best is not None and best.ends_reasoning:  # the shortest form ends it
                self._ended_at(i + (0 if best.keep else min(len(k.text) for k in full)),
                               best.keep)
            if longer:
                return i, None
            if best is not None:
                return i, best
        return len(buf), None

    def _ended_at(self, i: int, kept: bool) -> None:
        if not self.reasoning_ended:
            self.reasoning_ended, self.answer_kept = True, kept
            self.answer_offset = self._fed - len(self._buf) + i

    def _pass(self, marker: Marker) -> None:
        """Step over a marker found at the start of the buffer."""
        if marker is OPEN:
            self.in_reasoning = self._opened = True
        else:
            self._done, self.in_reasoning = True, False
        if not marker.keep:
            self._buf = self._buf[len(marker.text):]

    def _put(self, text: str, out: tuple[list[str], list[str]]) -> None:
        if not text:
            return
        self._opened = self._opened or bool(text.strip())
        side = 0 if self.in_reasoning else 1
        out[side].append((self._reasoning, self._content)[side].take(text))


def detect_style(text: str) -> str | None:
    """The style an answer of unknown origin is written in: think tags, a final-answer heading,
    or None (no reasoning part)."""
    if THINK_CLOSE in text or text.lstrip().startswith(THINK_OPEN):
        return "think"
    return "plain" if has_answer(text, "plain") else None


def split(text: str, style: str | None = None, tools: bool = False) -> tuple[str | None, str]:
    """(reasoning, content) of a whole answer, by the rule streams use (in_reasoning: the
    template opened the reasoning). style None reads the style off the text (detect_style);
    with neither think tags nor a heading there is no reasoning part (None)."""
    style = style or detect_style(text)
    if style is None:
        return None, text.strip()
    return ReasoningStreamer(style, in_reasoning=True, tools=tools).split(text)


def parse(text: str, style: str | None = None) -> ParsedAnswer:
    """Split a complete answer; the final answer comes from the content, or from the reasoning
    when the answer never started."""
    reasoning, content = split(text, style)
    source = content if reasoning is None or content else text
    return ParsedAnswer(reasoning, content, extract_boxed(source))


def has_answer(text: str, style: str) -> bool:
    """Has the model reached its answer: past `</think>`, or past a final-answer heading."""
    streamer = ReasoningStreamer(style, in_reasoning=True)
    streamer.feed(text)
    return streamer.reasoning_ended


def extract_boxed(text: str) -> str | None:
    """The content of the last `\\boxed{...}` (or `\\fbox{...}`), nested braces balanced."""
    best = None
    for match in re.finditer(r"\\(?:boxed|fbox)\s*\{", text):
        inner = _balanced(text, match.end())
        if inner is not None:
            best = inner
    return best.strip() if best is not None else None


def _balanced(text: str, start: int) -> str | None:
    depth = 1
    i = start
    while i < len(text):
        ch = text[i]
        if ch == "\\":  # an escaped brace (\{ or \}) does not count
            i += 2
            continue
        depth += ch == "{"
        depth -= ch == "}"
        if depth == 0:
            return text[start:i]
        i += 1
    return None
