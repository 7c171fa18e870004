"""Where a sequence's answer starts, in tokens: structured output applies from there.

vLLM starts a request's grammar once its reasoning parser says the reasoning has ended; so does
qwq. The gate decodes the sequence's output with its own detokenizer, feeds the text to the
split's parser (qwq.reasoning.parser, the rule streams and whole answers use) and answers with
the index of the first answer token. The thinking budget, `conclude` and a loop nudge close the
reasoning as usual; the gate sees their text like any other.

Until the answer starts the sequence may not end, or a request that asked for JSON would get
none: end tokens are masked, and where one was the most likely token the gate writes the
style's own end of reasoning instead (the text the thinking budget forces), one token a step.
"""

from __future__ import annotations

import torch

from qwq.reasoning.budget import CLOSE_TEXT
from qwq.reasoning.parser import ReasoningStreamer
from qwq.tokenizer import IncrementalDetokenizer


class ReasoningGate:
    """One sequence's answer start. update() before each sampled token; while it is None,
    hold_open() shapes that token's logits."""

    def __init__(self, tokenizer, style: str, tools: bool, end_ids: list[int],
                 skip_special_tokens: bool = True):
        self.parser = ReasoningStreamer(style, in_reasoning=True, tools=tools)
        self.detok = IncrementalDetokenizer(tokenizer, None, skip_special_tokens)
        self.close_ids = tokenizer.encode(CLOSE_TEXT[style], allow_special=True)
        self.end_ids = list(end_ids)
        self.text_ends: list[int] = []  # text length after each output token
        self.answer_start: int | None = None
        self._closing_at: int | None = None  # output length when the gate began to close

    def update(self, output_ids: list[int]) -> int | None:
        """Index in output_ids of the first answer token; None while the reasoning goes on."""
        for token in output_ids[len(self.text_ends):]:
            if self.answer_start is not None:
                break
            self.parser.feed(self.detok.add(token))
            self.text_ends.append(len(self.detok.text))
            if self.parser.reasoning_ended:
                self.answer_start = self._first_answer_token()
        return self.answer_start

    def _first_answer_token(self) -> int:
        """A dropped marker (`</think>`, a heading): the first token that begins after it (the
        rest of the token that ends the marker is spaces, or text the grammar cannot take
        back). A kept one (`<tool_call>`): the token that holds its first character."""
        offset = self.parser.answer_offset
        kept = self.parser.answer_kept
        for i, end in enumerate(self.text_ends):
            if end > offset if kept else end >= offset:
                return i if kept else i + 1
        return len(self.text_ends)

    def hold_open(self, output_ids: list[int], logits: torch.Tensor) -> torch.Tensor:
        """Logits for the next token while the answer has not started."""
        if self._closing_at is not None:
            written = output_ids[self._closing_at:]
            if len(written) < len(self.close_ids) and \
                    written == self.close_ids[:len(written)]:
                return _only(logits, self.close_ids[len(written)])
            self._closing_at = None  # something else was written (a control forced text)
        if self.end_ids and int(logits.argmax()) in self.end_ids:
            self._closing_at = len(output_ids)
            return _only(logits, self.close_ids[0])
        if self.end_ids:
            logits[self.end_ids] = float("-inf")
        return logits


def _only(logits: torch.Tensor, token: int) -> torch.Tensor:
    out = torch.full_like(logits, float("-inf"))
    out[token] = 0.0
    return out
