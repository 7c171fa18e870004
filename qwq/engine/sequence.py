"""A Sequence: one sample of one request, as the scheduler and runner see it."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any

from qwq.logits_processor import LogitsProcessor
from qwq.sampling_params import SamplingParams


class Status(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    FINISHED = "finished"


@dataclass
class Sequence:
    seq_id: int
    request_id: str
    index: int  # which of the request's n samples
    prompt_ids: list[int]
    params: SamplingParams
    arrival: float = 0.0
    output_ids: list[int] = field(default_factory=list)
    status: Status = Status.WAITING
    num_computed: int = 0  # tokens whose K/V are in the cache
    num_cached_prompt: int = 0  # prompt tokens served from the prefix cache at admission
    block_ids: list[int] = field(default_factory=list)
    block_hashes: list[bytes] = field(default_factory=list)  # of full blocks, chained
    finish_reason: str | None = None
    stop_reason: Any = None
    # positions in output_ids the engine forced in (reasoning controls), not sampled
    forced_ids: set[int] = field(default_factory=set)
    # its request's (SamplingParams.logits_processors), then its controls' (set by the engine)
    logits_processors: list[LogitsProcessor] = field(default_factory=list)
    num_preemptions: int = 0
    # draft scheduled this step after the last token (verified by the engine): prompt
    # lookup's, or the draft model's with its distribution per token when sampled
    draft_ids: list[int] = field(default_factory=list)
    draft_probs: list[Any] = field(default_factory=list)
    # with params.prompt_logprobs: None for the first prompt token, then {token: logprob}
    # for each next one (the prompt's own and the top-k), filled by the runner
    prompt_logprobs: list[dict[int, float] | None] | None = None

    @property
    def token_ids(self) -> list[int]:
        return self.prompt_ids + self.output_ids

    @property
    def num_tokens(self) -> int:
        return len(self.prompt_ids) + len(self.output_ids)

    @property
    def is_finished(self) -> bool:
        return self.status is Status.FINISHED

    @property
    def num_uncomputed(self) -> int:
        return self.num_tokens - self.num_computed
