"""Thinking budget and guaranteed conclusion.

Everything a sequence writes before its answer starts (`</think>`, or a final-answer heading in
the plain style) is reasoning. When the reasoning reaches the budget, or when max_tokens is
about to run out with no answer yet (conclude), the closer forces the model's own
end-of-reasoning marker and lets it answer in the tokens left.
"""

from __future__ import annotations

from qwq.reasoning import metrics
from qwq.reasoning.actions import Action, Force, SequenceControl
from qwq.reasoning.parser import ReasoningStreamer

# reasoning_effort -> thinking budget in tokens
EFFORT_BUDGETS = {"low": 1024, "medium": 4096, "high": 16384}
# What closes the reasoning, per style: the marker the model itself writes.
CLOSE_TEXT = {"think": "\n</think>\n\n", "plain": "\n\n**Final Answer**\n\n"}


def thinking_budget(max_thinking_tokens: int | None, effort: str | None) -> int | None:
    """The explicit cap wins; else the effort's budget; else no cap."""
    if max_thinking_tokens is not None:
        return max_thinking_tokens
    return EFFORT_BUDGETS.get(effort) if effort else None


def conclude_reserve(max_tokens: int) -> int:
    """Tokens kept back for a forced final answer: 1/8 of max_tokens, 16 to 512, at most half."""
    return min(max_tokens // 2, max(16, min(512, max_tokens // 8)))


class PhaseTracker:
    """Has this sequence's text reached its answer yet? The split's own parser, fed only the
    text it has not seen."""

    def __init__(self, style: str):
        self.style = style
        self._parser = ReasoningStreamer(style, in_reasoning=True)
        self._scanned = 0

    @property
    def answered(self) -> bool:
        return self._parser.reasoning_ended

    def update(self, text: str) -> bool:
        if not self.answered and len(text) > self._scanned:
            self._parser.feed(text[self._scanned:])
            self._scanned = len(text)
        return self.answered


class ReasoningCloser(SequenceControl):
    """Force the end-of-reasoning marker when the thinking budget is spent, or when only the
    conclusion reserve of max_tokens is left and no answer has started."""

    def __init__(self, tokenizer, phase: PhaseTracker, budget: int | None,
                 max_tokens: int | None, conclude: bool):
        self.phase = phase
        self.budget = budget
        self.conclude_at = max_tokens - conclude_reserve(max_tokens) \
            if conclude and max_tokens else None
        self.close_ids = tokenizer.encode(CLOSE_TEXT[phase.style], allow_special=True)
        self.closed_by: str | None = None  # "budget" or "conclude" once it has acted
        self.reasoning_tokens = 0

    def on_token(self, token_id: int, text: str, output_ids: list[int]) -> Action:
        if self.closed_by or self.phase.update(text):
            return None
        self.reasoning_tokens = len(output_ids)
        if self.budget is not None and self.reasoning_tokens >= self.budget:
            return self._close("budget")
        if self.conclude_at is not None and self.reasoning_tokens >= self.conclude_at:
            return self._close("conclude")
        return None

    def _close(self, why: str) -> Force:
        self.closed_by = why
        metrics.inc("reasoning_closed", reason=why)
        return Force(list(self.close_ids))
