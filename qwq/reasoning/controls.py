"""Build a sequence's reasoning controls from its request fields.

The engine calls the factory once per sequence; the controls run in this order after every
token (the first action wins): output guard, reasoning closer (thinking budget, conclusion),
loop control, language (a logits processor only).
"""

from __future__ import annotations

from dataclasses import dataclass

from qwq.errors import QwQError, RequestError
from qwq.reasoning.actions import SequenceControl
from qwq.reasoning.budget import PhaseTracker, ReasoningCloser, thinking_budget
from qwq.reasoning.guard import GuardControl, get_guard, guard_names
from qwq.reasoning.language import LanguageControl, detect_language, user_text
from qwq.reasoning.loops import LoopControl, PenalizingLoopControl
from qwq.sampling_params import SamplingParams

QWQ_PREVIEW_MARK = "You should think step-by-step"
REASONING_PARSERS = ("auto", "think", "plain", "none")


def detect_style(chat_template: str | None) -> tuple[str, bool]:
    """(reasoning style, is a reasoning model) from a chat template: `<think>` templates
    (QwQ-32B, R1 distills) use think tags; QwQ-32B-Preview's default system prompt marks the
    plain style; other models are not reasoning models (plain style when asked to conclude)."""
    template = chat_template or ""
    if "<think>" in template or "</think>" in template:
        return "think", True
    if QWQ_PREVIEW_MARK in template:
        return "plain", True
    return "plain", False


@dataclass
class ControlFactory:
    """What LLMEngine(control_factory=...) calls for each new sequence."""

    style: str = "plain"
    reasoning_model: bool = False

    @classmethod
    def for_tokenizer(cls, tokenizer, parser: str = "auto") -> ControlFactory:
        """parser: auto (detected from the chat template), think, plain, or none."""
        if parser not in REASONING_PARSERS:
            raise QwQError(f"reasoning_parser={parser!r}: choose one of "
                           f"{', '.join(REASONING_PARSERS)}")
        if parser == "auto":
            return cls(*detect_style(getattr(tokenizer, "chat_template", None)))
        return cls("plain", False) if parser == "none" else cls(parser, True)

    @property
    def parser_style(self) -> str | None:
        """The style answers are split by: None for a model that is not a reasoning model."""
        return self.style if self.reasoning_model else None

    def __call__(self, params: SamplingParams, tokenizer,
                 prompt_ids: list[int] | None = None) -> list[SequenceControl]:
        return build_controls(params, tokenizer, prompt_ids, self.style, self.reasoning_model)


def build_controls(params: SamplingParams, tokenizer, prompt_ids: list[int] | None = None,
                   style: str | None = None, reasoning_model: bool | None = None
                   ) -> list[SequenceControl]:
    """The controls a request asks for; [] when it asks for none."""
    if style is None:
        style, detected = detect_style(getattr(tokenizer, "chat_template", None))
        reasoning_model = detected if reasoning_model is None else reasoning_model
    conclude = params.conclude if params.conclude is not None else bool(reasoning_model)
    phase = PhaseTracker(style)
    controls: list[SequenceControl] = []
    if params.guard:
        controls.append(GuardControl(_guard(params.guard), tokenizer))
    budget = thinking_budget(params.max_thinking_tokens, params.reasoning_effort)
    if budget is not None or (conclude and params.max_tokens):
        controls.append(ReasoningCloser(tokenizer, phase, budget, params.max_tokens, conclude))
    if params.loop_control != "off":
        cls = PenalizingLoopControl if params.loop_control == "penalize" else LoopControl
        kwargs = {} if cls is PenalizingLoopControl else {"action": params.loop_control}
        controls.append(cls(tokenizer, phase, conclude=conclude, **kwargs))
    language = _language(params.language, tokenizer, prompt_ids)
    if language:
        controls.append(LanguageControl(tokenizer, language, _user_ids(tokenizer, prompt_ids)))
    return controls


def _guard(name: str):
    try:
        return get_guard(name)
    except KeyError:
        raise RequestError(f"guard {name!r} is not configured; available: "
                           f"{', '.join(guard_names())}", param="guard") from None


def _language(setting: str | None, tokenizer, prompt_ids: list[int] | None) -> str | None:
    if setting != "auto":
        return setting
    if not prompt_ids:
        return None  # nothing to detect from
    return detect_language(tokenizer.decode(prompt_ids))


def _user_ids(tokenizer, prompt_ids: list[int] | None) -> list[int]:
    """Token ids of the user's words: the answer may quote them whatever their script."""
    if not prompt_ids:
        return []
    return tokenizer.encode(user_text(tokenizer.decode(prompt_ids)))
