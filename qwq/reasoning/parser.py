"""Split a reasoning model's answer into reasoning, content and a final answer.

Two styles:
- "think": reasoning wrapped in `<think>…</think>` (QwQ-32B, DeepSeek-R1-Distill-Qwen). Their
  chat templates often open `<think>` in the prompt, so the output may hold only `</think>`.
- "plain": QwQ-32B-Preview's plain-text reasoning that ends in a final-answer section
  (`**Final Answer**`), usually with `\\boxed{...}`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

THINK_OPEN = "<think>"
THINK_CLOSE = "</think>"
# Headings that open QwQ-32B-Preview's final-answer section, most specific first.
FINAL_ANSWER_HEADINGS = ("**Final Answer**", "**Final Answer:**", "### Final Answer",
                         "## Final Answer")
STYLES = ("think", "plain")
_FINAL_RE = re.compile(r"\*\*Final Answer:?\*\*:?|#{2,3} Final Answer:?", re.IGNORECASE)


@dataclass
class ParsedAnswer:
    reasoning: str | None  # None when the text has no recognizable reasoning part
    content: str
    final_answer: str | None  # the last \boxed{...}, braces balanced, when there is one


def parse(text: str, style: str | None = None) -> ParsedAnswer:
    """Split a complete answer. style None tries think tags, then the final-answer heading."""
    reasoning, content = split(text, style)
    source = content if reasoning is None or content.strip() else text
    return ParsedAnswer(reasoning, content, extract_boxed(source))


def split(text: str, style: str | None = None) -> tuple[str | None, str]:
    """(reasoning, content). With think tags: an open `<think>` never closed means the whole
    text is reasoning. In the plain style: everything before the last final-answer heading."""
    if style in (None, "think"):
        if THINK_CLOSE in text:
            head, _, tail = text.partition(THINK_CLOSE)
            return _strip_open(head).strip(), tail.strip()
        if text.lstrip().startswith(THINK_OPEN):
            return _strip_open(text).strip(), ""
        if style == "think":
            return None, text.strip()
    match = _last_heading(text)
    if match is None:
        return None, text.strip()
    return text[:match.start()].strip(), text[match.end():].strip()


def _strip_open(text: str) -> str:
    stripped = text.lstrip()
    return stripped[len(THINK_OPEN):] if stripped.startswith(THINK_OPEN) else text


def _last_heading(text: str) -> re.Match | None:
    last = None
    for last in _FINAL_RE.finditer(text):
        pass
    return last


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


def has_answer(text: str, style: str | None) -> bool:
    """Has the model reached its answer: after `</think>`, or past a final-answer heading."""
    if style == "think":
        return THINK_CLOSE in text
    return _FINAL_RE.search(text) is not None


class ReasoningStreamer:
    """Incremental split of text deltas into (reasoning_delta, content_delta).

    A possible partial marker at the end of the buffer is held back until the next delta (or
    finish()) settles it, so a tag split across tokens is never shown as text.
    in_reasoning: the prompt already opened the reasoning (a template that ends in `<think>`,
    or the plain style, where everything before the final-answer heading is reasoning).
    """

    def __init__(self, style: str = "think", in_reasoning: bool = False):
        if style not in STYLES:
            raise ValueError(f"style must be one of {STYLES}, got {style!r}")
        self.style = style
        self.in_reasoning = in_reasoning or style == "plain"
        self.done_reasoning = False
        self._buf = ""
        self._started = False  # any non-space text seen (a late <think> is not a tag)

    def split(self, text: str) -> tuple[str, str]:
        """(reasoning, content) of a whole answer, exactly as streaming it would split it."""
        r1, c1 = self.feed(text)
        r2, c2 = self.finish()
        return r1 + r2, c1 + c2

    def feed(self, delta: str) -> tuple[str, str]:
        self._buf += delta
        reasoning, content = "", ""
        while True:
            marker, index = self._next_marker()
            if index < 0:
                break
            before = self._buf[:index]
            reasoning, content = self._emit(before, reasoning, content)
            self._buf = self._buf[index + len(marker):]
            self._switch(marker)
        keep = self._partial_len()
        out, self._buf = self._buf[:len(self._buf) - keep], self._buf[len(self._buf) - keep:]
        return self._emit(out, reasoning, content)

    def finish(self) -> tuple[str, str]:
        out, self._buf = self._buf, ""
        return self._emit(out, "", "")

    def _markers(self) -> tuple[str, ...]:
        if self.done_reasoning:
            return ()
        if self.style == "plain":
            return FINAL_ANSWER_HEADINGS
        if self.in_reasoning:  # a model may still open with <think> itself: swallow it
            return (THINK_CLOSE,) if self._started else (THINK_OPEN, THINK_CLOSE)
        return () if self._started else (THINK_OPEN,)

    def _next_marker(self) -> tuple[str, int]:
        found = ("", -1)
        for marker in self._markers():
            i = self._buf.find(marker)
            if i >= 0 and (found[1] < 0 or i < found[1]):
                found = (marker, i)
        if found[1] > 0 and found[0] == THINK_OPEN and self._buf[:found[1]].strip():
            return ("", -1)  # text before <think>: the tag is quoted, not structural
        return found

    def _switch(self, marker: str) -> None:
        if marker == THINK_OPEN:
            self.in_reasoning = True
        else:
            self.in_reasoning, self.done_reasoning = False, True

    def _partial_len(self) -> int:
        """Length of the longest buffer suffix that is a proper prefix of a marker."""
        best = 0
        for marker in self._markers():
            for n in range(min(len(marker) - 1, len(self._buf)), 0, -1):
                if self._buf.endswith(marker[:n]):
                    best = max(best, n)
                    break
        return best

    def _emit(self, text: str, reasoning: str, content: str) -> tuple[str, str]:
        if not text:
            return reasoning, content
        self._started = self._started or bool(text.strip())
        if self.in_reasoning:
            return reasoning + text, content
        return reasoning, content + text
