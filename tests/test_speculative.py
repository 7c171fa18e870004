"""Prompt-lookup speculative decoding: drafts, verification in the same forward, KV rollback,
and output identical to decoding without it (tiny random model, then the demo model)."""

import collections

import pytest
import torch

from qwq.config import EngineConfig
from qwq.engine.sampler import _draw
from qwq.engine.speculative import propose_ngram
from qwq.errors import QwQError
from qwq.llm import run_to_completion
from qwq.models import engine_for
from qwq.sampling_params import SamplingParams


def test_propose_ngram_takes_the_most_recent_longest_match():
    assert propose_ngram([1, 2, 3, 9, 1, 2, 3, 7, 1, 2, 3], 2, 1, 3) == [7, 1]
    assert propose_ngram([5, 1, 2, 6, 6, 2], 3, 1, 3) == [6, 6, 2]  # only the 1-gram "2"
    assert propose_ngram([5, 1, 2, 6, 6, 2], 3, 2, 3) == []  # min n-gram size 2: none
    assert propose_ngram([4, 4, 4, 4], 5, 1, 2) == [4]  # the match right before the suffix
    assert propose_ngram([1], 3, 1, 2) == [] and propose_ngram([1, 2, 1], 0, 1, 2) == []


def test_draft_acceptance_keeps_the_sampling_distribution():
    """Accept d with probability p(d), else draw from p without d: the result is p."""
    logits = torch.tensor([2.0, 1.0, 0.5, 0.0, -1.0])
    p = SamplingParams(temperature=1.0, top_p=1.0, top_k=0)
    want = logits.softmax(-1)
    g = torch.Generator().manual_seed(0)
    draws = 20000
    for draft in (0, 3):
        counts = collections.Counter(_draw(logits.clone(), p, g, draft) for _ in range(draws))
        got = torch.tensor([counts[i] / draws for i in range(5)])
        assert torch.allclose(got, want, atol=0.015), (draft, got, want)


def make(net, tokenizer, **kw):
    return engine_for(net, tokenizer, EngineConfig(**{"num_kv_blocks": 256, "block_size": 4,
                                                      **kw}))


def run(engine, prompts, params):
    return [[c.token_ids for c in o.outputs]
            for o in run_to_completion(engine, prompts, [params] * len(prompts))]


PROMPTS = ["a b c a b c a b c a b", "1 2 3 4 1 2 3 4 1 2 3", "def f(x):\n    return x",
           "the cat the cat the cat the", "Why?"]


def test_tiny_model_greedy_identical_and_blocks_rolled_back(net, tokenizer):
    params = SamplingParams(temperature=0, max_tokens=24, ignore_eos=True, n=2)
    want = run(make(net, tokenizer), PROMPTS, params)
    engine = make(net, tokenizer, speculative_ngram=4, prompt_lookup_min=1)
    assert run(engine, PROMPTS, params) == want
    assert engine.counters["draft_tokens"] > 0
    assert engine.counters["accepted_draft_tokens"] <= engine.counters["draft_tokens"]
    assert sum(engine.blocks.ref_count) == 0  # every block given back
    assert engine.counters["generation_tokens"] == sum(len(t) for o in want for t in o)


def test_tiny_model_processors_stops_and_small_pools(net, tokenizer):
    """Penalties and logits processors see the context up to each verified position; stop
    strings, max_tokens and a pool too small for drafts behave as without speculation."""
    seen = []

    def processor(output_ids, logits):
        seen.append(len(output_ids))
        logits[output_ids[-1:] or [0]] -= 0.5
        return logits

    params = [SamplingParams(temperature=0, max_tokens=20, ignore_eos=True,
                             repetition_penalty=1.3),
              SamplingParams(temperature=0, max_tokens=20, ignore_eos=True,
                             logits_processors=[processor]),
              SamplingParams(temperature=0, max_tokens=7, ignore_eos=True, stop=[" a"])]
    for p in params:
        seen.clear()
        base = run(make(net, tokenizer), PROMPTS, p)
        without = sorted(seen)
        seen.clear()
        got = run(make(net, tokenizer, speculative_ngram=3, prompt_lookup_min=1), PROMPTS, p)
        assert got == base
        assert sorted(seen) == without  # one call per position, the same contexts
        if p.logits_processors:
            assert sorted(set(without)) == list(range(20))
    small = make(net, tokenizer, speculative_ngram=8, prompt_lookup_min=1, num_kv_blocks=14,
                 max_num_batched_tokens=9)
    p = SamplingParams(temperature=0, max_tokens=16, ignore_eos=True)
    want = run(make(net, tokenizer), PROMPTS, p)
    assert run(small, PROMPTS, p) == want
    assert sum(small.blocks.ref_count) == 0
    # the same pool without drafts: waiting sequences must not hoard cached blocks (they did,
    # and the engine stalled with every sequence waiting)
    plain = make(net, tokenizer, num_kv_blocks=14, max_num_batched_tokens=9)
    assert run(plain, PROMPTS, p) == want


def test_seeded_sampling_with_drafts_runs_and_bad_settings_fail(net, tokenizer):
    p = SamplingParams(temperature=0.8, top_p=0.9, max_tokens=16, seed=3, ignore_eos=True)
    engine = make(net, tokenizer, speculative_ngram=4, prompt_lookup_min=1)
    a, b = run(engine, PROMPTS, p), run(engine, PROMPTS, p)
    assert a == b and all(len(t[0]) == 16 for t in a)
    with pytest.raises(QwQError, match="speculative_ngram"):
        make(net, tokenizer, speculative_ngram=2, prompt_lookup_min=3, prompt_lookup_max=2)


QUOTE = ("def fib(n):\n    if n < 2:\n        return n\n    return fib(n - 1) + fib(n - 2)\n\n\n"
         "print([fib(i) for i in range(10)])\n")


@pytest.mark.slow
def test_demo_model_greedy_identical_with_speculation():
    """float32 (quantize auto -> none): bf16/int8 runs agree too but for rare near-ties,
    where a multi-token forward rounds differently from a one-token one (as batching does)."""
    from qwq import LLM
    llm = LLM("qwq-demo", dtype="float32")
    chats = [[{"role": "user", "content": "Repeat this code, renaming fib to fibonacci:\n\n"
               + QUOTE}],
             [{"role": "user", "content": "Summarise in one sentence: The quick brown fox "
               "jumps over the lazy dog. The dog does not move. The fox jumps again."}]]
    prompts = [llm.encode_chat(c) for c in chats]
    cases = [SamplingParams(temperature=0, max_tokens=40, n=2),
             SamplingParams(temperature=0, max_tokens=40, stop=["fibonacci(i)", "lazy"]),
             SamplingParams(temperature=0, max_tokens=24, language="en", loop_control="penalize")]
    outs = {}
    for k in (0, 5):
        llm.engine.config.speculative_ngram = k
        outs[k] = [[(c.token_ids, c.text, c.finish_reason) for o in llm.generate(prompts, p)
                    for c in o.outputs] for p in cases]
    for case, (got, want) in enumerate(zip(outs[5], outs[0])):
        for i, (g, w) in enumerate(zip(got, want)):
            first = next((j for j, (x, y) in enumerate(zip(g[0], w[0])) if x != y), None)
            assert g == w, (case, i, first, g[1][-80:], w[1][-80:])
    assert llm.engine.counters["accepted_draft_tokens"] > 10
    assert sum(llm.engine.blocks.ref_count) == 0
