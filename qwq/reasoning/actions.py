"""The per-sequence control interface, and the actions a control may return to the engine.

Controls sit after the sampler: each watches the token stream of one sequence and returns an
action; the engine applies it. They never touch the scheduler or the cache themselves.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from qwq.logits_processor import LogitsProcessor


@dataclass
class Force:
    """Append these tokens as if the model had written them (they are computed next step)."""
    token_ids: list[int]


@dataclass
class Stop:
    """Finish the sequence now with this finish_reason ("loop", "content_filter", ...). detail
    goes to the caller as the sequence's stop_reason; text_end, when set, is where the text the
    caller may see ends (an output guard's block: the blocked text never reaches it)."""
    finish_reason: str
    detail: dict[str, Any] = field(default_factory=dict)
    text_end: int | None = None


Action = Force | Stop | None


class SequenceControl:
    """One sequence's control. The engine makes one of each kind per sequence (its
    control_factory, and SamplingParams.controls) and calls these, in the controls' order;
    each does nothing unless a control overrides it."""

    def on_prompt(self, prompt_ids: list[int]) -> Stop | None:
        """Once, before the request runs: a Stop refuses it (an input guard's block)."""
        return None

    def logits_processor(self) -> LogitsProcessor | None:
        """What shapes this sequence's logits before each of its tokens is sampled, if
        anything; asked once, when the sequence is made."""
        return None

    def on_token(self, token_id: int, text: str, output_ids: list[int]) -> Action:
        """After each sampled token, with the sequence's output text and ids so far."""
        return None
