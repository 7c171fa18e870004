"""Speculative decoding with a draft model: greedy output identical to the model alone, the
rejection rule keeps sampling's distribution, the draft's cache follows the target's blocks
through prefix hits, preemption and rollback, a draft with another vocabulary is refused, and
the acceptance rate reaches /metrics (tiny random models, then the demo model)."""

import collections
import json

import httpx
import pytest
import torch
from test_server_support import TINY, start_stack, tiny_model_dir

from qwq.config import EngineConfig
from qwq.engine.sampler import _draw
from qwq.errors import CheckpointError
from qwq.llm import run_to_completion
from qwq.model import Qwen2Model
from qwq.models import engine_for, load_engine
from qwq.sampling_params import SamplingParams

PROMPTS = ["a b c a b c a b c a b", "1 2 3 4 1 2 3 4 1 2 3", "def f(x):\n    return x",
           "the cat the cat the cat the", "Why?"]


@pytest.fixture(scope="module")
def other_net(net):
    """A draft that mostly disagrees with net: net with noise on every weight."""
    torch.manual_seed(1)
    draft = Qwen2Model(net.config).eval()
    draft.load_state_dict(net.state_dict())
    with torch.no_grad():
        for p in draft.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    return draft


def make(net, tokenizer, draft=None, **kw):
    cfg = {"num_kv_blocks": 256, "block_size": 4, **kw}
    if draft is not None:
        cfg.setdefault("speculative_model", "test draft")
    return engine_for(net, tokenizer, EngineConfig(**cfg), draft=draft)


def run(engine, prompts, params):
    return [[c.token_ids for c in o.outputs]
            for o in run_to_completion(engine, prompts, [params] * len(prompts))]


def test_rejection_rule_keeps_the_target_distribution():
    """Draft d ~ q, kept with probability min(1, p(d)/q(d)), else a draw from max(0, p - q):
    the tokens come out distributed as p, whatever q is."""
    logits = torch.tensor([2.0, 1.0, 0.5, 0.0, -1.0])
    params = SamplingParams(temperature=1.0, top_p=1.0, top_k=0)
    p = logits.softmax(-1)
    q = torch.tensor([0.05, 0.6, 0.05, 0.25, 0.05])
    g = torch.Generator().manual_seed(0)
    draws = 20000
    drafts = torch.multinomial(q, draws, replacement=True, generator=g).tolist()
    counts = collections.Counter(_draw(logits.clone(), params, g, d, q) for d in drafts)
    got = torch.tensor([counts[i] / draws for i in range(5)])
    assert torch.allclose(got, p, atol=0.015), (got, p)


@pytest.mark.parametrize("same", [True, False], ids=["self-draft", "noisy-draft"])
def test_greedy_output_is_the_model_alone(net, other_net, tokenizer, same):
    params = SamplingParams(temperature=0, max_tokens=24, ignore_eos=True, n=2)
    want = run(make(net, tokenizer), PROMPTS, params)
    engine = make(net, tokenizer, draft=net if same else other_net, num_speculative_tokens=3)
    assert run(engine, PROMPTS, params) == want
    c = engine.counters
    assert c["draft_tokens"] > 0 and c["generation_tokens"] == sum(len(t) for o in want for t in o)
    if same:  # the draft is the model: every draft token is kept
        assert c["accepted_draft_tokens"] == c["draft_tokens"]
    else:
        assert c["accepted_draft_tokens"] < c["draft_tokens"]
    assert sum(engine.blocks.ref_count) == 0  # every block given back
    assert not engine.runner.draft.valid  # and the draft forgot every sequence


def test_prefix_hits_preemption_chunks_and_stops_keep_the_output(net, other_net, tokenizer):
    """The draft's cache rides on the target's blocks: prefix-cache hits, preemption in a
    small pool, prefill in small chunks, stop strings and penalties all give the tokens the
    model gives alone; and prompt lookup composes (the longer draft wins)."""
    cases = [SamplingParams(temperature=0, max_tokens=16, ignore_eos=True),
             SamplingParams(temperature=0, max_tokens=16, ignore_eos=True,
                            repetition_penalty=1.3, stop=[" the"])]
    shared = ["You are a careful assistant. " * 4 + p for p in PROMPTS]
    for params in cases:
        want = run(make(net, tokenizer), shared, params)
        small = make(net, tokenizer, draft=net, num_kv_blocks=16, max_num_batched_tokens=9)
        assert run(small, shared, params) == want
        assert run(small, shared, params) == want  # again: prefix-cache hits this time
        assert small.blocks.hit_rate() > 0 and small.counters["preemptions"] > 0
        both = make(net, tokenizer, draft=other_net, speculative_ngram=6, prompt_lookup_min=1)
        assert run(both, shared, params) == want
        assert sum(small.blocks.ref_count) == sum(both.blocks.ref_count) == 0


def test_sampling_with_a_draft_is_seeded_and_fails_alone(net, other_net, tokenizer):
    p = SamplingParams(temperature=0.8, top_p=0.9, max_tokens=16, seed=3, ignore_eos=True)
    engine = make(net, tokenizer, draft=other_net)
    a, b = run(engine, PROMPTS, p), run(engine, PROMPTS, p)
    assert a == b and all(len(t[0]) == 16 for t in a)
    assert 0 < engine.counters["accepted_draft_tokens"] < engine.counters["draft_tokens"]


def _write_other_vocabulary_model(directory) -> None:
    """A tiny Qwen2 whose tokenizer knows 300 made-up words."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    from qwq.weights import expected_shapes, save_safetensors_dir
    vocab = {f"w{i}": i for i in range(299)} | {"<eos>": 299}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="w0"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    cfg = TINY.replace(vocab_size=300)
    weights = {name: torch.randn(shape) * 0.5 for name, shape in expected_shapes(cfg).items()}
    save_safetensors_dir(weights, cfg, directory, dtype=torch.float32)
    tok.save(str(directory / "tokenizer.json"))
    (directory / "tokenizer_config.json").write_text(json.dumps({"eos_token": "<eos>"}))


def test_a_draft_with_another_vocabulary_is_refused(tmp_path):
    _write_other_vocabulary_model(tmp_path)
    with pytest.raises(CheckpointError, match="another vocabulary than the model .300 tokens"):
        load_engine(str(tiny_model_dir()), dtype="float32", device="cpu",
                    engine_config=EngineConfig(speculative_model=str(tmp_path)))


def test_acceptance_rate_per_request_in_metrics():
    """A live server with the tiny model drafting for itself, through the openai client."""
    path = str(tiny_model_dir())
    engine, _, _ = load_engine(path, dtype="float32", device="cpu", engine_config=EngineConfig(
        num_kv_blocks=512, block_size=4, max_model_len=512, speculative_model=path))
    stack = start_stack(engine)
    try:
        client = stack.client()
        r = client.chat.completions.create(model="tiny", max_tokens=20, temperature=0,
                                           messages=[{"role": "user", "content": "Hi"}],
                                           extra_body={"ignore_eos": True})
        assert r.usage.completion_tokens == 20
        text = httpx.get(stack.url + "/metrics").text
        values = {line.split()[0]: float(line.split()[1]) for line in text.splitlines()
                  if line.startswith("qwq_spec_decode")}
        assert values["qwq_spec_decode_acceptance_ratio_count"] == 1
        assert values["qwq_spec_decode_acceptance_ratio_sum"] == 1.0  # itself: all kept
        assert values["qwq_spec_decode_draft_tokens_total"] > 0
        stack.settled()
    finally:
        stack.close()


@pytest.mark.slow
def test_demo_model_greedy_identical_with_its_q5_0_copy_drafting():
    """The demo model in float32 (near-ties of bf16 round differently in a multi-token
    forward, as batching does; see test_speculative) checked by its q5_0 copy."""
    from qwq import LLM
    llm = LLM("qwq-demo", dtype="float32", speculative_model="qwq-demo",
              num_speculative_tokens=4)
    prompts = [llm.encode_chat([{"role": "user", "content": c}]) for c in
               ("Write a Python function that tells whether a number is prime.",
                "Name three rivers of Europe and one fact about each.")]
    params = SamplingParams(temperature=0, max_tokens=48, ignore_eos=True)
    eng = llm.engine
    with_draft = [o.outputs[0].token_ids for o in llm.generate(prompts, params)]
    eng.config.num_speculative_tokens = 0
    alone = [o.outputs[0].token_ids for o in llm.generate(prompts, params)]
    assert with_draft == alone
    assert eng.counters["accepted_draft_tokens"] > 0.6 * eng.counters["draft_tokens"]
    assert sum(eng.blocks.ref_count) == 0
