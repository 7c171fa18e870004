"""Drive the engine for an evaluation: all problems in flight together, n samples per problem
sharing the prompt's KV blocks, stragglers cancelled once a vote is decided."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

from qwq.reasoning.controls import ControlFactory
from qwq.reasoning.loops import LoopControl


@dataclass
class Sample:
    text: str
    tokens: int
    finish_reason: str | None
    looped: bool  # the loop detector fired (whatever it then did)


class _Recorder:
    """Wraps the engine's control factory to keep each sequence's controls."""

    def __init__(self, inner):
        self.inner, self.made = inner, []

    def __call__(self, params, tokenizer, prompt_ids=None):
        controls = self.inner(params, tokenizer, prompt_ids) if self.inner else []
        self.made.append(controls)
        return controls


def vote_decided(answers: list[str | None], pending: int) -> bool:
    """No unfinished sample can change the majority any more."""
    counts = Counter(a for a in answers if a is not None).most_common(2)
    if not counts:
        return pending == 0
    second = counts[1][1] if len(counts) > 1 else 0
    return counts[0][1] - second > pending


def generate(engine, prompts: list[list[int]], params,
             extract: Callable[[str], str | None] | None = None) -> list[list[Sample]]:
    """Samples for every prompt. With extract (text -> answer) and params.n > 1, a request is
    aborted as soon as its vote is decided; the samples finished by then are returned."""
    inner = engine.control_factory or ControlFactory.for_tokenizer(engine.tokenizer)
    recorder = _Recorder(inner)
    engine.control_factory = recorder
    try:
        ids, controls = [], {}
        for p in prompts:
            rid = engine.add_request(p, params)
            ids.append(rid)
            controls[rid] = recorder.made[-params.n:]
        done = _step_all(engine, ids, params.n, extract)
    finally:
        engine.control_factory = inner
    return [_samples(done[rid], controls[rid]) for rid in ids]


def _step_all(engine, ids: list[str], n: int, extract) -> dict:
    done: dict[str, object] = {}
    while len(done) < len(ids):
        for out in engine.step():
            rid = out.request_id
            if out.finished:
                done[rid] = out
            elif extract and n > 1 and rid not in done and _decided(out, extract):
                engine.abort(rid)
    return done


def _decided(out, extract) -> bool:
    finished = [c for c in out.outputs if c.finish_reason is not None]
    answers = [extract(c.text) for c in finished]
    return len(finished) < len(out.outputs) and vote_decided(
        answers, len(out.outputs) - len(finished))


def _samples(out, controls: list[list]) -> list[Sample]:
    result = []
    for c in out.outputs:
        if c.finish_reason == "abort":
            continue
        loops = [x for x in controls[c.index] if isinstance(x, LoopControl)]
        looped = c.finish_reason == "loop" or any(x.events for x in loops)
        result.append(Sample(c.text, len(c.token_ids), c.finish_reason, looped))
    return result
