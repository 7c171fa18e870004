"""Constrained decoding with xgrammar: response_format json_object / json_schema, and tool
calls forced by tool_choice ("required" or a named function).

A compiled grammar becomes a Grammar, which the request carries in SamplingParams.controls: it
makes each sequence a GrammarControl, whose logits processor feeds the sequence's new tokens to
a matcher and masks every token the grammar does not allow next. The control lives as long as
its sequence, so a preempted and recomputed sequence continues where it was. For a reasoning
model the grammar starts where the answer does (after `</think>` or the final-answer heading,
or at a tool call): the sequence's ReasoningGate says where that is.
"""

from __future__ import annotations

import json
import threading
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import torch

from qwq.errors import RequestError
from qwq.logits_processor import LogitsProcessor
from qwq.reasoning.actions import SequenceControl
from qwq.reasoning.gate import ReasoningGate
from qwq.sampling_params import SamplingParams

MAX_CACHED = 64


def _xgrammar() -> Any:
    """xgrammar, imported on first use (it takes a second); None when not installed, and then
    constrained requests get a clear 400."""
    try:
        import xgrammar
    except ImportError:
        return None
    return xgrammar


GateMaker = Callable[[SamplingParams], ReasoningGate]  # a sequence's gate, from its params


class Grammar:
    """A request's compiled grammar: called with a sequence's params (SamplingParams.controls),
    it makes that sequence's GrammarControl; with gate, the grammar starts where the sequence's
    answer starts."""

    def __init__(self, compiled: Any, vocab_size: int, gate: GateMaker | None = None):
        self.compiled = compiled
        self.vocab_size = vocab_size
        self.gate = gate

    def __call__(self, params: SamplingParams) -> GrammarControl:
        return GrammarControl(self.compiled, self.vocab_size,
                              self.gate(params) if self.gate else None)


class GrammarControl(SequenceControl):
    """One sequence's grammar: its logits processor allows only what the grammar allows next
    (with gate, only from where the answer starts; until then gate.hold_open shapes them)."""

    def __init__(self, compiled: Any, vocab_size: int, gate: ReasoningGate | None):
        self.compiled = compiled
        self.vocab_size = vocab_size
        self.gate = gate
        self.matcher: Any = None  # made at the first token the grammar sees
        self.mask: Any = None
        self.accepted = 0  # answer tokens fed to the matcher

    def logits_processor(self) -> LogitsProcessor:
        return self.process_logits

    def process_logits(self, output_ids: list[int], logits: torch.Tensor) -> torch.Tensor:
        start = self.gate.update(output_ids) if self.gate else 0
        if start is None:
            return self.gate.hold_open(output_ids, logits)
        xgr = _xgrammar()
        if self.matcher is None:
            self.matcher = xgr.GrammarMatcher(self.compiled)
            self.mask = xgr.allocate_token_bitmask(1, self.vocab_size)
        for token in output_ids[start + self.accepted:]:
            self.matcher.accept_token(token)
        self.accepted = len(output_ids) - start
        self.matcher.fill_next_token_bitmask(self.mask)
        row = logits if logits.dtype == torch.float32 else logits.float()
        xgr.apply_token_bitmask_inplace(row.view(1, -1), self.mask.to(row.device),
                                        vocab_size=self.vocab_size)
        return row


class Grammars:
    """Compiles grammars for one tokenizer; the vocabulary table is built on first use."""

    def __init__(self, tokenizer: Any, vocab_size: int):
        self.tokenizer = tokenizer
        self.vocab_size = vocab_size
        self._compiler = None
        self._lock = threading.Lock()
        self._cache: OrderedDict[str, Any] = OrderedDict()

    def _get_compiler(self) -> Any:
        xgr = _xgrammar()
        with self._lock:
            if self._compiler is None:
                table = list(self.tokenizer.token_bytes(True) or [])
                table += [b""] * (self.vocab_size - len(table))
                info = xgr.TokenizerInfo(table[:self.vocab_size], xgr.VocabType.RAW,
                                         vocab_size=self.vocab_size,
                                         stop_token_ids=list(self.tokenizer.eos_token_ids))
                self._compiler = xgr.GrammarCompiler(info, max_threads=2)
            return self._compiler

    def _compiled(self, key: str, build: Callable[[Any], Any], param: str) -> Any:
        if key in self._cache:
            self._cache.move_to_end(key)
            return self._cache[key]
        try:
            compiled = build(self._get_compiler())
        except (RuntimeError, ValueError, TypeError) as e:
            raise RequestError(f"invalid schema: {str(e).splitlines()[0][:300]}",
                               param=param, code="invalid_json_schema") from None
        with self._lock:
            self._cache[key] = compiled
            while len(self._cache) > MAX_CACHED:
                self._cache.popitem(last=False)
        return compiled

    def _require(self, param: str) -> None:
        if _xgrammar() is None:
            raise RequestError("constrained decoding needs the xgrammar package, which is not "
                               "installed on this server", param=param)

    def gate(self, style: str | None, tools: bool) -> GateMaker | None:
        """For a reasoning model (style set): each sequence's gate, so that its grammar starts
        with its answer. None: the grammar starts with the first token."""
        if style is None:
            return None

        def make(p: SamplingParams) -> ReasoningGate:
            ends = [] if p.ignore_eos else list(self.tokenizer.eos_token_ids)
            return ReasoningGate(self.tokenizer, style, tools, ends + list(p.stop_token_ids),
                                 p.skip_special_tokens)
        return make

    def json_processor(self, schema: dict[str, Any] | None,
                       gate: GateMaker | None = None) -> Grammar:
        """Any JSON object (schema None) or JSON that follows schema."""
        param = "response_format" if schema is None else "response_format.json_schema.schema"
        self._require(param)
        if schema is None:  # any object (the builtin JSON grammar would allow arrays too)
            compiled = self._compiled("object", lambda c: c.compile_json_schema(
                '{"type": "object"}', any_whitespace=False, strict_mode=False), param)
        else:
            text = json.dumps(schema, sort_keys=True)
            compiled = self._compiled("schema:" + text, lambda c: c.compile_json_schema(
                text, any_whitespace=False), param)
        return Grammar(compiled, self.vocab_size, gate)

    def tool_call_processor(self, tools: list[dict[str, Any]],
                            gate: GateMaker | None = None) -> Grammar:
        """Exactly one `<tool_call>` block calling one of tools with matching arguments."""
        self._require("tool_choice")
        schemas = [{"type": "object", "required": ["name", "arguments"],
                    "properties": {"name": {"const": t["function"]["name"]},
                                   "arguments": t["function"].get("parameters")
                                   or {"type": "object"}}} for t in tools]
        text = json.dumps(schemas, sort_keys=True)

        def build(compiler: Any) -> Any:
            xgr = _xgrammar()
            calls = [xgr.Grammar.from_json_schema(json.dumps(s), any_whitespace=False)
                     for s in schemas]
            body = calls[0] if len(calls) == 1 else xgr.Grammar.union(*calls)
            grammar = xgr.Grammar.concat(xgr.Grammar.from_regex(r"<tool_call>\n"), body,
                                         xgr.Grammar.from_regex(r"\n</tool_call>"))
            return compiler.compile_grammar(grammar)

        return Grammar(self._compiled("tools:" + text, build, "tools"), self.vocab_size, gate)
