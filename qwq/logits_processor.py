"""The one signature of a logits processor, whoever supplies it: SamplingParams.logits_processors
(vLLM's two-argument form), a sequence's reasoning controls and the server's grammars
(SequenceControl.logits_processor), transformers' processors (qwq.compat adapts them)."""

from __future__ import annotations

from typing import Protocol

import torch


class LogitsProcessor(Protocol):
    def __call__(self, output_ids: list[int], logits: torch.Tensor) -> torch.Tensor:
        """One sequence's generated token ids so far and its float32 logits for the next token,
        a (vocab,) row (after logit_bias, min_tokens' bans and the penalties); returns the row
        to sample from, which may be logits itself changed in place. A processor of
        SamplingParams is called for every sequence of its request."""
