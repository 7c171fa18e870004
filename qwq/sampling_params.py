"""SamplingParams with vLLM's field names; None means "the checkpoint's default"."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field, fields, replace
from typing import Any

from qwq.errors import RequestError
from qwq.logits_processor import LogitsProcessor
from qwq.reasoning.actions import SequenceControl
from qwq.reasoning.budget import EFFORT_BUDGETS
from qwq.reasoning.language import LANGUAGE_SCRIPTS
from qwq.reasoning.loops import LOOP_ACTIONS

MAX_STOP_STRINGS = 64
MAX_STOP_LEN = 256
MAX_N = 64
MAX_LOGPROBS = 20


@dataclass
class SamplingParams:
    n: int = 1
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    min_p: float | None = None
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repetition_penalty: float | None = None
    seed: int | None = None
    stop: str | list[str] | None = None
    stop_token_ids: list[int] | None = None
    max_tokens: int | None = 512
    min_tokens: int = 0
    ignore_eos: bool = False
    logprobs: int | None = None
    prompt_logprobs: int | None = None
    skip_special_tokens: bool = True
    include_stop_str_in_output: bool = False
    logit_bias: dict[int, float] | None = None
    cache_salt: str | None = None  # prefix-cache blocks are only shared under the same salt
    # vLLM's: fn(output_ids, logits) -> logits (qwq.logits_processor), for every sequence
    logits_processors: list[LogitsProcessor] = field(default_factory=list)
    # controls a caller adds (the server's grammars): each makes one control per sequence of
    # the request, from the sequence's params (qwq.reasoning.actions.SequenceControl)
    controls: list[ControlMaker] = field(default_factory=list)
    # reasoning controls (qwq.reasoning); None: the model's default
    max_thinking_tokens: int | None = None  # cap on reasoning tokens, then the answer
    reasoning_effort: str | None = None  # "low" | "medium" | "high": a thinking budget
    loop_control: str = "nudge"  # "off" | "stop" | "nudge" | "penalize"
    language: str | None = None  # "auto" (the user's script) or a code such as "en", "zh"
    guard: str | None = None  # name of a registered guard policy
    conclude: bool | None = None  # force a final answer before max_tokens; on for reasoning models

    def __post_init__(self) -> None:
        if isinstance(self.stop, str):
            self.stop = [self.stop]
        self.stop = list(self.stop or [])
        self.stop_token_ids = list(self.stop_token_ids or [])
        self.logits_processors = list(self.logits_processors or [])
        self.controls = list(self.controls or [])
        self.validate()

    def validate(self, vocab_size: int | None = None) -> None:
        def bad(param: str, msg: str) -> RequestError:
            return RequestError(f"{param}: {msg}", param=param)

        if not isinstance(self.n, int) or not 1 <= self.n <= MAX_N:
            raise bad("n", f"must be an integer in [1, {MAX_N}], got {self.n!r}")
        for name, lo, hi in (("temperature", 0.0, 100.0), ("top_p", 0.0, 1.0),
                             ("min_p", 0.0, 1.0), ("presence_penalty", -2.0, 2.0),
                             ("frequency_penalty", -2.0, 2.0), ("repetition_penalty", 0.0, 100.0)):
            v = getattr(self, name)
            if v is None:
                continue
            if not isinstance(v, (int, float)) or math.isnan(v) or not lo <= v <= hi:
                raise bad(name, f"must be a number in [{lo}, {hi}], got {v!r}")
        if self.top_p is not None and self.top_p <= 0:
            raise bad("top_p", "must be > 0")
        if self.repetition_penalty is not None and self.repetition_penalty <= 0:
            raise bad("repetition_penalty", "must be > 0")
        if self.top_k is not None and (not isinstance(self.top_k, int) or self.top_k < -1):
            raise bad("top_k", f"must be -1, 0 (off) or a positive integer, got {self.top_k!r}")
        if self.max_tokens is not None and (not isinstance(self.max_tokens, int)
                                            or self.max_tokens < 1):
            raise bad("max_tokens", f"must be a positive integer, got {self.max_tokens!r}")
        if not isinstance(self.min_tokens, int) or self.min_tokens < 0:
            raise bad("min_tokens", f"must be a non-negative integer, got {self.min_tokens!r}")
        if self.max_tokens is not None and self.min_tokens > self.max_tokens:
            raise bad("min_tokens", f"min_tokens={self.min_tokens} exceeds "
                      f"max_tokens={self.max_tokens}")
        if len(self.stop) > MAX_STOP_STRINGS:
            raise bad("stop", f"at most {MAX_STOP_STRINGS} stop strings, got {len(self.stop)}")
        if any(not isinstance(s, str) or not s or len(s) > MAX_STOP_LEN for s in self.stop):
            raise bad("stop", f"stop strings must be non-empty strings of at most "
                      f"{MAX_STOP_LEN} characters")
        for name in ("logprobs", "prompt_logprobs"):
            v = getattr(self, name)
            if v is not None and (not isinstance(v, int) or not 0 <= v <= MAX_LOGPROBS):
                raise bad(name, f"must be an integer in [0, {MAX_LOGPROBS}], got {v!r}")
        if vocab_size is not None:
            self._validate_ids(vocab_size, bad)
        self._validate_reasoning(bad)
        self._validate_callables(bad)

    def _validate_reasoning(self, bad) -> None:

        v = self.max_thinking_tokens
        if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v < 1):
            raise bad("max_thinking_tokens", f"must be a positive integer, got {v!r}")
        if self.reasoning_effort is not None and self.reasoning_effort not in EFFORT_BUDGETS:
            raise bad("reasoning_effort", f"must be one of {', '.join(EFFORT_BUDGETS)}, "
                      f"got {self.reasoning_effort!r}")
        if self.loop_control not in LOOP_ACTIONS:
            raise bad("loop_control", f"must be one of {', '.join(LOOP_ACTIONS)}, "
                      f"got {self.loop_control!r}")
        if self.language is not None and self.language != "auto" \
                and self.language not in LANGUAGE_SCRIPTS:
            raise bad("language", f"must be 'auto' or one of {', '.join(sorted(LANGUAGE_SCRIPTS))}"
                      f", got {self.language!r}")
        if self.guard is not None and (not isinstance(self.guard, str)
                                       or not 0 < len(self.guard) <= 64):
            raise bad("guard", f"must be the name of a guard policy, got {self.guard!r}")
        if self.conclude is not None and not isinstance(self.conclude, bool):
            raise bad("conclude", f"must be true or false, got {self.conclude!r}")

    def _validate_callables(self, bad) -> None:
        if not all(callable(f) for f in self.logits_processors):
            raise bad("logits_processors", "must be functions fn(output_ids, logits) -> logits")
        if not all(callable(f) for f in self.controls):
            raise bad("controls", "must be functions fn(params) -> SequenceControl")

    def _validate_ids(self, vocab_size: int, bad) -> None:
        for t in self.stop_token_ids:
            if not isinstance(t, int) or not 0 <= t < vocab_size:
                raise bad("stop_token_ids", f"token id {t!r} is outside the vocabulary "
                          f"[0, {vocab_size})")
        for t, b in (self.logit_bias or {}).items():
            if not isinstance(t, int) or not 0 <= t < vocab_size:
                raise bad("logit_bias", f"token id {t!r} is outside the vocabulary "
                          f"[0, {vocab_size})")
            if not isinstance(b, (int, float)) or math.isnan(b) or not -100 <= b <= 100:
                raise bad("logit_bias", f"bias for token {t} must be in [-100, 100], got {b!r}")

    def with_defaults(self, defaults: dict[str, Any]) -> SamplingParams:
        """Fill fields left None from a checkpoint's generation_config.json."""
        changes = {}
        for f in fields(self):
            if getattr(self, f.name) is None and f.name in defaults:
                changes[f.name] = defaults[f.name]
        return replace(self, **changes) if changes else self

    @property
    def greedy(self) -> bool:
        return self.temperature is not None and self.temperature < 1e-5


# makes one sequence's control from the sequence's params (SamplingParams.controls)
ControlMaker = Callable[[SamplingParams], SequenceControl]


def defaults_from_generation_config(gen: dict[str, Any]) -> dict[str, Any]:
    """generation_config.json -> SamplingParams defaults (do_sample false means greedy)."""
    out: dict[str, Any] = {}
    for key in ("temperature", "top_p", "top_k", "repetition_penalty", "min_p"):
        if isinstance(gen.get(key), (int, float)):
            out[key] = gen[key]
    if gen.get("do_sample") is False:
        out["temperature"] = 0.0
    return out


# What a request gets when neither it nor the checkpoint says: vLLM's neutral defaults.
NEUTRAL_DEFAULTS = {"temperature": 1.0, "top_p": 1.0, "top_k": 0, "min_p": 0.0,
                    "repetition_penalty": 1.0}
