"""What a per-sequence control may tell the engine after each sampled token.

Controls sit after the sampler: they watch the token stream of one sequence and return an
action; the engine applies it. They never touch the scheduler or the cache themselves.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

import torch


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


class SequenceControl(Protocol):
    def on_token(self, token_id: int, text: str, output_ids: list[int]) -> Action:
        """Called after each sampled token with the sequence's full output text so far."""

    def process_logits(self, output_ids: list[int], logits: torch.Tensor) -> torch.Tensor:
        """Called before sampling each token of this sequence; return (possibly new) logits."""
