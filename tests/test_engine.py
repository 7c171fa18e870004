"""The engine on a tiny random Qwen2 with the real Qwen tokenizer: batching, sampling,
stops, prefix caching, preemption, aborts, errors."""

import pytest
import torch

from qwq.config import EngineConfig
from qwq.errors import QueueFullError, RequestError
from qwq.llm import run_to_completion
from qwq.models import engine_for
from qwq.reasoning.actions import SequenceControl
from qwq.sampling_params import SamplingParams

GREEDY = SamplingParams(temperature=0, max_tokens=12, ignore_eos=True)


def make(net, tokenizer, **kw):
    return engine_for(net, tokenizer, EngineConfig(**{"num_kv_blocks": 256, "block_size": 4,
                                                      **kw}))


def texts(engine, prompts, params=GREEDY):
    return [o.outputs[0].token_ids for o in run_to_completion(engine, prompts,
                                                              [params] * len(prompts))]


PROMPTS = ["Hello", "The quick brown fox jumps over the lazy dog", "1 2 3", "你好，世界",
           "def f(x):\n    return x", "a " * 30, "Why?", "<|im_start|>user\nhi"]


def test_batch_equals_each_alone(net, tokenizer):
    engine = make(net, tokenizer)
    together = texts(engine, PROMPTS)
    alone = [texts(make(net, tokenizer), [p])[0] for p in PROMPTS]
    assert together == alone
    # no block leaks: every block is free again (prefix-cached ones stay free, only hashed)
    assert engine.stats()["running"] == 0
    assert engine.blocks.num_free == engine.blocks.num_blocks
    assert not any(engine.blocks.ref_count)


def test_chunked_prefill_and_small_budget_give_same_tokens(net, tokenizer):
    want = texts(make(net, tokenizer), PROMPTS)
    assert texts(make(net, tokenizer, max_num_batched_tokens=7), PROMPTS) == want
    assert texts(make(net, tokenizer, max_num_seqs=2), PROMPTS) == want


def test_preemption_gives_same_greedy_tokens(net, tokenizer):
    want = texts(make(net, tokenizer), PROMPTS)
    tight = make(net, tokenizer, num_kv_blocks=24, enable_prefix_caching=False)
    got = texts(tight, PROMPTS, SamplingParams(temperature=0, max_tokens=12, ignore_eos=True))
    assert tight.counters["preemptions"] > 0
    assert got == want
    assert tight.blocks.num_free == tight.blocks.num_blocks


def test_prefix_cache_hit_reuses_blocks_and_keeps_output(net, tokenizer):
    engine = make(net, tokenizer)
    prefix = "You are a careful assistant. " * 8
    first = run_to_completion(engine, [prefix + "One"], [GREEDY])[0]
    second = run_to_completion(engine, [prefix + "Two"], [GREEDY])[0]
    assert first.num_cached_tokens == 0
    assert second.num_cached_tokens >= 40
    fresh = run_to_completion(make(net, tokenizer, enable_prefix_caching=False),
                              [prefix + "Two"], [GREEDY])[0]
    assert second.outputs[0].token_ids == fresh.outputs[0].token_ids
    other_tenant = SamplingParams(temperature=0, max_tokens=4, cache_salt="tenant-b")
    third = run_to_completion(engine, [prefix + "Two"], [other_tenant])[0]
    assert third.num_cached_tokens == 0  # no hits across salts


def test_seed_reproducible_and_n_samples(net, tokenizer):
    engine = make(net, tokenizer)
    p = SamplingParams(temperature=1.0, top_p=0.9, top_k=50, seed=7, max_tokens=10, n=3,
                       ignore_eos=True)
    a = run_to_completion(engine, ["Hello"], [p])[0]
    b = run_to_completion(engine, ["Hello"], [p])[0]
    assert [o.token_ids for o in a.outputs] == [o.token_ids for o in b.outputs]
    assert len(a.outputs) == 3 and len({tuple(o.token_ids) for o in a.outputs}) > 1
    other = SamplingParams(temperature=1.0, seed=8, max_tokens=10, ignore_eos=True)
    c = run_to_completion(engine, ["Hello"], [other])[0]
    assert c.outputs[0].token_ids != a.outputs[0].token_ids


def test_stops(net, tokenizer):
    engine = make(net, tokenizer)
    base = run_to_completion(engine, ["Hello"], [SamplingParams(temperature=0, max_tokens=20,
                                                               ignore_eos=True)])[0].outputs[0]
    assert base.finish_reason == "length" and len(base.token_ids) == 20
    stop_tok = base.token_ids[5]
    out = run_to_completion(engine, ["Hello"], [SamplingParams(
        temperature=0, max_tokens=20, stop_token_ids=[stop_tok], ignore_eos=True)])[0].outputs[0]
    assert out.finish_reason == "stop" and out.stop_reason == stop_tok
    assert out.token_ids == base.token_ids[:base.token_ids.index(stop_tok) + 1]
    stop_str = base.text[len(base.text) // 2:][:3]
    if stop_str.strip():
        out = run_to_completion(engine, ["Hello"], [SamplingParams(
            temperature=0, max_tokens=20, stop=[stop_str], ignore_eos=True)])[0].outputs[0]
        assert out.finish_reason == "stop" and stop_str not in out.text
        assert base.text.startswith(out.text)


def test_streamed_deltas_add_up_to_the_text(net, tokenizer):
    engine = make(net, tokenizer)
    rid = engine.add_request("你好", SamplingParams(temperature=0, max_tokens=30,
                                                    ignore_eos=True))
    deltas, final = [], None
    while engine.has_unfinished():
        for out in engine.step():
            assert out.request_id == rid
            deltas.append(out.outputs[0].delta_text)
            final = out
    assert "".join(deltas) == final.outputs[0].text
    # UTF-8 safe: a character split across tokens leaves no replacement character behind
    assert final.outputs[0].text == tokenizer.decode(final.outputs[0].token_ids,
                                                     skip_special_tokens=True)


def test_abort_frees_blocks_and_continuous_batching(net, tokenizer):
    engine = make(net, tokenizer, enable_prefix_caching=False)
    free0 = engine.blocks.num_free
    long = engine.add_request("Hello there", SamplingParams(temperature=0, max_tokens=200,
                                                            ignore_eos=True))
    for _ in range(3):
        engine.step()
    late = engine.add_request("Late joiner", GREEDY)  # joins while the first runs
    finished = {}
    for _ in range(5):
        for out in engine.step():
            if out.finished:
                finished[out.request_id] = out
    engine.abort(long)
    while engine.has_unfinished():
        for out in engine.step():
            if out.finished:
                finished[out.request_id] = out
    assert finished[long].outputs[0].finish_reason == "abort"
    assert finished[late].outputs[0].finish_reason == "length"
    assert engine.blocks.num_free == free0 and not engine.requests


def test_nan_logits_fail_one_request_alone(net, tokenizer):
    engine = make(net, tokenizer)

    def poison(output_ids, logits):
        return logits * float("nan")

    bad = SamplingParams(temperature=0, max_tokens=5, logits_processors=[poison])
    outs = run_to_completion(engine, ["Hello", "Hello", "World"], [GREEDY, bad, GREEDY])
    assert outs[1].outputs[0].finish_reason == "error" and "NaN" in outs[1].outputs[0].error
    assert outs[0].outputs[0].finish_reason == "length"
    assert outs[2].outputs[0].finish_reason == "length"
    assert engine.blocks.num_free + len(engine.blocks.cached) >= engine.blocks.num_blocks - 1


def test_request_processors_and_controls_run_for_each_sequence(net, tokenizer):
    """SamplingParams.logits_processors (vLLM's fn(output_ids, logits)) run for every sequence
    with its own output ids; SamplingParams.controls make one control per sequence, whose
    processor runs after the request's."""
    engine = make(net, tokenizer)
    plain = texts(engine, ["Hello"])[0]
    order = []

    def ban_greedy(output_ids, logits):
        order.append("request")
        logits[plain[len(output_ids)]] = float("-inf")
        return logits

    class Seen(SequenceControl):
        def __init__(self, params):
            self.lengths = []

        def logits_processor(self):
            return self.process

        def process(self, output_ids, logits):
            order.append("control")
            self.lengths.append(len(output_ids))
            return logits

    made = []
    params = SamplingParams(temperature=0, max_tokens=12, ignore_eos=True, n=2,
                            loop_control="off", logits_processors=[ban_greedy],
                            controls=[lambda p: made.append(Seen(p)) or made[-1]])
    out = run_to_completion(engine, ["Hello"], [params])[0]
    assert [c.token_ids[0] != plain[0] for c in out.outputs] == [True, True]
    assert len(made) == 2 and all(m.lengths == list(range(12)) for m in made)
    assert order == ["request", "control"] * 24
    with pytest.raises(RequestError, match="logits_processors"):
        SamplingParams(logits_processors=["not a function"])


def test_greedy_batch_fails_only_the_nan_row():
    """The plain greedy path (no per-row processing) picks every row with one argmax and
    still finds a NaN anywhere in a row."""
    from qwq.engine.sampler import sample
    from qwq.engine.sequence import Sequence
    logits = torch.randn(3, 1000)
    logits[1, 999] = float("nan")
    seqs = [Sequence(i, f"r{i}", 0, [1, 2], SamplingParams(temperature=0, max_tokens=4))
            for i in range(3)]
    out = sample(logits, seqs, (0,), {})
    assert [s.token for s in out] == [int(logits[0].argmax()), -1, int(logits[2].argmax())]
    assert out[1].error and "NaN" in out[1].error and out[0].error is None is out[2].error


def test_bad_requests_have_clear_errors(net, tokenizer):
    engine = make(net, tokenizer, max_model_len=64, max_waiting=2)
    with pytest.raises(RequestError, match="prompt has .* tokens"):
        engine.add_request("word " * 100, GREEDY)
    with pytest.raises(RequestError, match="empty"):
        engine.add_request([], GREEDY)
    with pytest.raises(RequestError) as e:
        SamplingParams(temperature=float("nan"))
    assert e.value.param == "temperature"
    with pytest.raises(RequestError) as e:
        SamplingParams(min_tokens=10, max_tokens=5)
    assert e.value.param == "min_tokens"
    with pytest.raises(RequestError) as e:
        engine.add_request("hi", SamplingParams(logit_bias={10**7: 1.0}))
    assert e.value.param == "logit_bias"
    with pytest.raises(RequestError):
        SamplingParams(stop=["x"] * 5000)
    engine.add_request("a", GREEDY)
    engine.add_request("b", GREEDY)
    with pytest.raises(QueueFullError):
        engine.add_request("c", GREEDY)


def test_generation_config_supplies_defaults(net, tokenizer):
    gen = {"temperature": 0.7, "top_p": 0.8, "top_k": 20, "repetition_penalty": 1.05}
    engine = engine_for(net, tokenizer, EngineConfig(num_kv_blocks=64), gen)
    p = SamplingParams().with_defaults(engine.defaults)
    assert (p.temperature, p.top_p, p.top_k, p.repetition_penalty) == (0.7, 0.8, 20, 1.05)
    explicit = SamplingParams(temperature=0.0).with_defaults(engine.defaults)
    assert explicit.temperature == 0.0 and explicit.top_k == 20


def test_prompt_logprobs_equal_a_full_forward(net, tokenizer):
    engine = make(net, tokenizer, max_num_batched_tokens=5)  # scored across chunks
    prompt = tokenizer.encode("The quick brown fox jumps over the lazy dog")
    out = run_to_completion(engine, [prompt], [SamplingParams(
        temperature=0, max_tokens=1, prompt_logprobs=2)])[0]
    assert out.prompt_logprobs[0] is None and len(out.prompt_logprobs) == len(prompt)
    whole = make(net, tokenizer)
    ref = run_to_completion(whole, [prompt], [SamplingParams(
        temperature=0, max_tokens=1, prompt_logprobs=0)])[0]
    for i in range(1, len(prompt)):
        got, want = out.prompt_logprobs[i][prompt[i]], ref.prompt_logprobs[i][prompt[i]]
        assert abs(got - want) < 1e-4
        assert len(out.prompt_logprobs[i]) >= 2


@pytest.mark.parametrize("fused", [True, False], ids=["cpu-kernels", "torch-ops"])
def test_padded_decode_steps_give_the_plain_tokens(net, tokenizer, fused, monkeypatch):
    """Decode steps through qwq.engine.graphs' padded buffers (what a CUDA graph replays; run
    eagerly here) give the plain path's tokens while the batch shrinks as sequences finish and
    block tables cross power-of-two widths; padded rows write only the one extra block. With
    the torch ops (fused=False) attention takes the masked-matmul path a GPU captures."""
    if not fused:
        import qwq.model.attention
        import qwq.model.qwen2
        for module in (qwq.model.attention, qwq.model.qwen2):
            monkeypatch.setattr(module, "fused_layers_take", lambda x: False)
    params = [SamplingParams(temperature=0, max_tokens=4 + 3 * i, ignore_eos=True)
              for i in range(len(PROMPTS))]
    plain = make(net, tokenizer)
    want = [o.outputs[0].token_ids for o in run_to_completion(plain, PROMPTS, params)]
    engine = engine_for(net, tokenizer, EngineConfig(num_kv_blocks=256, block_size=4),
                        decode_graphs=True)
    graphs = engine.runner.graphs
    shapes = []
    run = graphs.run
    graphs.run = lambda ids, meta: (shapes.append(graphs._shape(len(meta.query_lens),
                                                               meta.block_tables.shape[1])),
                                    run(ids, meta))[1]
    got = [o.outputs[0].token_ids for o in run_to_completion(engine, PROMPTS, params)]
    assert got == want
    assert {s for s, _ in shapes} >= {8, 4, 2, 1} and len({w for _, w in shapes}) >= 2
    assert engine.runner.kv.num_blocks == engine.blocks.num_blocks + 1 == 257
    assert engine.runner.graphs.scratch == 256


def test_padded_rows_write_only_the_scratch_block(net, tokenizer):
    """As the batch shrinks, rows a bigger step left in the padded buffers must be pointed back
    at the scratch block before the step runs: left as they were, they would write K/V into
    slots of blocks that may since belong to another sequence. Checked at every step."""
    engine = engine_for(net, tokenizer, EngineConfig(num_kv_blocks=256, block_size=4),
                        decode_graphs=True)
    graphs, seen = engine.runner.graphs, []
    run = graphs.run

    def checked(ids, meta):
        out = run(ids, meta)
        batch = len(meta.query_lens)
        size, _ = graphs._shape(batch, meta.block_tables.shape[1])
        seen.append((batch, size))
        assert (graphs.slots[batch:size] // 4 == graphs.scratch).all()
        assert (graphs.tables[batch:size] == graphs.scratch).all()
        assert (graphs.slots[:batch] == meta.slot_mapping).all()
        return out

    graphs.run = checked
    run_to_completion(engine, PROMPTS, [SamplingParams(temperature=0, max_tokens=3 + 2 * i,
                                                       ignore_eos=True)
                                        for i in range(len(PROMPTS))])
    assert any(batch < size for batch, size in seen)


def test_steps_with_scored_prompt_rows_skip_the_graphs(net, tokenizer):
    """A one-token prompt chunk with prompt_logprobs makes a decode-only step whose logits rows
    are not its sequences in order (scored rows come first): it must not take the graph path,
    or the decoding sequence would sample from the other's row."""
    def go(graphs):
        engine = engine_for(net, tokenizer, EngineConfig(
            num_kv_blocks=256, block_size=4, max_num_batched_tokens=2,
            enable_prefix_caching=False), decode_graphs=graphs)
        decoding = engine.add_request([100, 200], SamplingParams(temperature=0, max_tokens=12,
                                                                 ignore_eos=True))
        outs = {o.request_id: o for o in engine.step()}
        scored = engine.add_request(list(range(300, 310)), SamplingParams(
            temperature=0, max_tokens=2, ignore_eos=True, prompt_logprobs=0))
        while engine.has_unfinished():
            outs.update((o.request_id, o) for o in engine.step())
        return outs[decoding].outputs[0].token_ids, outs[scored].prompt_logprobs

    assert go(True) == go(False)
