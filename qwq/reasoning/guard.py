"""Safety guard: checks on a request's input (before it runs) and on its output (as it streams).

Two kinds, one interface (`Guard`: a name, `check(text, stage) -> GuardDecision`, and how
output checks may run):
- PatternGuard: an operator's policy of categories, each a list of regular expressions, from a
  dict or a JSON/YAML file. Cheap enough to run on every token (only the unseen tail is read).
- ModelGuard: asks a chat model to classify, with a prompt the operator can replace.

Guards are registered by name; a request names the one it wants in its `guard` field.
A blocked request or answer finishes with finish_reason "content_filter" and the category.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from qwq.reasoning import metrics
from qwq.reasoning.actions import SequenceControl, Stop
from qwq.reasoning.language import user_text
from qwq.sampling_params import SamplingParams

STAGES = ("input", "output")


@dataclass
class GuardDecision:
    allowed: bool
    stage: str
    category: str | None = None
    guard: str | None = None
    span: tuple[int, int] | None = None  # where in the checked text the category matched

    def as_detail(self) -> dict[str, Any]:
        return {"category": self.category, "guard": self.guard, "stage": self.stage}


class Guard(Protocol):
    """What GuardControl and the registry need of a guard."""

    name: str
    # cheap enough to check the output after every token; else every few hundred characters
    streaming: bool
    # characters re-read behind new output, for matches across tokens; None: the whole output
    window: int | None

    def check(self, text: str, stage: str) -> GuardDecision:
        """Is text allowed at this stage ("input" or "output")?"""


@dataclass
class Category:
    name: str
    patterns: list[re.Pattern]
    stages: tuple[str, ...] = STAGES


@dataclass
class PatternGuard:
    name: str
    categories: list[Category] = field(default_factory=list)
    window: int = 512  # characters re-read behind new output, for matches across tokens
    streaming = True

    @classmethod
    def from_dict(cls, name: str, data: dict[str, Any]) -> PatternGuard:
        """{"categories": {cat: {"patterns": [regex, ...], "stages": ["input", "output"]}}};
        a category may also be a bare list of patterns. Patterns ignore case."""
        cats = data.get("categories")
        if not isinstance(cats, dict) or not cats:
            raise ValueError(f"guard {name!r}: 'categories' must be a non-empty mapping")
        out = [_category(cat, spec) for cat, spec in cats.items()]
        return cls(name, out, int(data.get("window", 512)))

    def check(self, text: str, stage: str) -> GuardDecision:
        for cat in self.categories:
            if stage not in cat.stages:
                continue
            for pattern in cat.patterns:
                m = pattern.search(text)
                if m:
                    return GuardDecision(False, stage, cat.name, self.name, m.span())
        return GuardDecision(True, stage, guard=self.name)


def _category(name: str, spec: Any) -> Category:
    if isinstance(spec, list):
        spec = {"patterns": spec}
    patterns = spec.get("patterns") if isinstance(spec, dict) else None
    if not patterns or not all(isinstance(p, str) for p in patterns):
        raise ValueError(f"guard category {name!r}: 'patterns' must be a list of strings")
    stages = tuple(spec.get("stages", STAGES))
    if not set(stages) <= set(STAGES):
        raise ValueError(f"guard category {name!r}: stages must be among {STAGES}")
    try:
        compiled = [re.compile(p, re.IGNORECASE) for p in patterns]
    except re.error as e:
        raise ValueError(f"guard category {name!r}: bad pattern: {e}") from None
    return Category(name, compiled, stages)


DEFAULT_GUARD_PROMPT = """You are a content safety classifier. Decide whether the {stage} text \
below belongs to one of these unsafe categories:
{categories}

Reply with one line only: "safe", or "unsafe: " followed by the category name.

Text:
\"\"\"
{text}
\"\"\""""


class ModelGuard:
    """Classify with a chat model. `classify(messages) -> reply text` is any chat call, e.g.
    ModelGuard.from_llm(qwq.LLM(...)). Unparseable replies allow unless fail_closed."""

    streaming = False  # too slow for every token: checks input, and output when asked
    window = None  # reads all of the output (its last max_chars)

    def __init__(self, name: str, classify: Callable[[list[dict]], str],
                 categories: dict[str, str], prompt: str = DEFAULT_GUARD_PROMPT,
                 max_chars: int = 8000, fail_closed: bool = False):
        self.name, self.classify, self.categories = name, classify, categories
        self.prompt, self.max_chars, self.fail_closed = prompt, max_chars, fail_closed

    @classmethod
    def from_llm(cls, llm, name: str = "model", **kwargs: Any) -> ModelGuard:
        params = SamplingParams(temperature=0.0, max_tokens=16, loop_control="off")

        def classify(messages: list[dict]) -> str:
            return llm.chat(messages, params)[0].outputs[0].text

        return cls(name, classify, **kwargs)

    def check(self, text: str, stage: str) -> GuardDecision:
        listing = "\n".join(f"- {k}: {v}" for k, v in self.categories.items())
        content = self.prompt.format(stage=stage, categories=listing,
                                     text=text[-self.max_chars:])
        reply = self.classify([{"role": "user", "content": content}]).strip().lower()
        category = self._parse(reply)
        if category is None:
            return GuardDecision(True, stage, guard=self.name)
        return GuardDecision(False, stage, category, self.name)

    def _parse(self, reply: str) -> str | None:
        if reply.startswith("unsafe"):
            named = reply.partition(":")[2].strip()
            return next((c for c in self.categories if c.lower() in named), named or "unsafe")
        if reply.startswith("safe"):
            return None
        return "unparseable" if self.fail_closed else None


# A demonstration policy; operators load their own with load_guards().
BASIC_POLICY = {"categories": {
    "weapons": [(r"\b(?:how (?:do i|to|can i)|steps to|instructions (?:for|to)) "
                r"(?:make|build|assemble|synthesi[sz]e)\w* (?:an? )?"
                r"(?:pipe ?bomb|bomb|explosive device|nerve agent|sarin|ricin)")],
    "self_harm": [r"\b(?:best|easiest|painless) ways? to (?:kill|hurt|harm) (?:myself|yourself)"],
    "secrets": {"patterns": [r"-----BEGIN (?:RSA |EC |OPENSSH |DSA )?PRIVATE KEY-----",
                             r"\bAKIA[0-9A-Z]{16}\b"], "stages": ["output"]},
}}

_registry: dict[str, Guard] = {"basic": PatternGuard.from_dict("basic", BASIC_POLICY)}
_registry_lock = threading.Lock()


def register_guard(guard: Guard) -> None:
    with _registry_lock:
        _registry[guard.name] = guard


def get_guard(name: str) -> Guard:
    with _registry_lock:
        if name not in _registry:
            raise KeyError(name)
        return _registry[name]


def guard_names() -> list[str]:
    with _registry_lock:
        return sorted(_registry)


def load_guards(path: str | Path) -> list[PatternGuard]:
    """Register the pattern guards of a JSON or YAML file: {"guards": {name: policy}}, or one
    policy ({"name": ..., "categories": ...})."""
    text = Path(path).read_text()
    if str(path).endswith((".yaml", ".yml")):
        import yaml
        data = yaml.safe_load(text)
    else:
        data = json.loads(text)
    policies = data["guards"] if "guards" in data else {data.get("name", "custom"): data}
    guards = [PatternGuard.from_dict(name, policy) for name, policy in policies.items()]
    for g in guards:
        register_guard(g)
    return guards


def run_check(guard: Guard, text: str, stage: str, count_allow: bool = True) -> GuardDecision:
    """One guard decision, timed and counted in metrics (output checks run on every token, so
    they count only their blocks)."""
    start = time.perf_counter()
    decision = guard.check(text, stage)
    metrics.inc("guard_seconds", time.perf_counter() - start, stage=stage, guard=guard.name)
    if decision.allowed and not count_allow:
        return decision
    metrics.inc("guard_decision", stage=stage, guard=guard.name,
                decision="allow" if decision.allowed else "block",
                category=decision.category or "")
    return decision


class GuardControl(SequenceControl):
    """Checks the input before the request runs (the user turns of the prompt) and the output
    as it grows; on a block, stops with "content_filter". The Stop detail names the category,
    the guard and the stage; an output block's Stop also sets text_end, where the blocked text
    begins: the engine cuts the text there."""

    def __init__(self, guard: Guard, tokenizer: Any = None, interval_chars: int = 400):
        self.guard = guard
        self.tokenizer = tokenizer
        self.interval = 0 if guard.streaming else interval_chars
        self._scanned = 0

    def on_prompt(self, prompt_ids: list[int]) -> Stop | None:
        if self.tokenizer is None:
            return None
        text = user_text(self.tokenizer.decode(prompt_ids), all_turns=True)
        decision = run_check(self.guard, text, "input")
        return None if decision.allowed else Stop("content_filter", decision.as_detail())

    def on_token(self, token_id: int, text: str, output_ids: list[int]) -> Stop | None:
        if len(text) - self._scanned <= self.interval:
            return None
        window = self.guard.window
        start = 0 if window is None else max(0, self._scanned - window)
        self._scanned = len(text)
        decision = run_check(self.guard, text[start:], "output", count_allow=False)
        if decision.allowed:
            return None
        cut = start + decision.span[0] if decision.span else self._scanned
        return Stop("content_filter", decision.as_detail(), text_end=cut)
