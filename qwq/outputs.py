"""What a request returns, shaped like vLLM's RequestOutput / CompletionOutput."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any


@dataclass
class CompletionOutput:
    index: int
    text: str
    token_ids: list[int]
    cumulative_logprob: float | None = None
    logprobs: list[dict[int, float]] | None = None  # per token: {id: logprob}, chosen first
    finish_reason: str | None = None  # "stop" | "length" | "abort" | "error" | "loop" | ...
    stop_reason: Any = None  # the stop string or token id that ended it
    delta_text: str = ""  # text new since the previous output of this request (streaming)
    delta_token_ids: list[int] = field(default_factory=list)
    error: str | None = None

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None


@dataclass
class RequestOutput:
    request_id: str
    prompt: str | None
    prompt_token_ids: list[int]
    outputs: list[CompletionOutput]
    finished: bool
    num_cached_tokens: int = 0
    # per prompt token: {token id: logprob} (None for the first), when prompt_logprobs is set
    prompt_logprobs: list[dict[int, float] | None] | None = None
    metrics: dict[str, float] = field(default_factory=dict)


def merge_outputs(earlier: RequestOutput, later: RequestOutput) -> RequestOutput:
    """One output standing for two successive outputs of a request that nobody has read yet:
    the later one's state, with the deltas of both (a consumer that fell behind reads them
    as one)."""
    joined = [dataclasses.replace(b, delta_text=a.delta_text + b.delta_text,
                                  delta_token_ids=a.delta_token_ids + b.delta_token_ids)
              for a, b in zip(earlier.outputs, later.outputs)]
    return dataclasses.replace(later, outputs=joined)
