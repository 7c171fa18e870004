"""qwq/kernels/decoder.cpp: a decode step's decoder layer on a GGUF's own blocks in one call,
whose numbers are the eager layer's bit for bit (it calls the same kernels, and rounds the
bias, rope and cache writes where those torch ops round)."""

import pytest
import torch

from qwq import LLM, SamplingParams
from qwq.kernels import kernels_available

pytestmark = pytest.mark.skipif(not kernels_available(),
                                reason="needs qwq's CPU kernels (AVX-512 VNNI)")

PROMPTS = [[11, 502, 9000, 33, 7], [5, 6], list(range(100, 140))]


def _logprobs(outputs):
    return [(o.outputs[0].token_ids,
             [{k: getattr(v, "logprob", v) for k, v in step.items()}
              for step in o.outputs[0].logprobs]) for o in outputs]


def _rows(kv):
    """Each layer's written K and V rows, as bytes, in sorted order."""
    return [sorted(bytes(r.numpy()) for r in c.view(c.shape[0], -1).view(torch.uint8) if r.any())
            for cache in (kv.k, kv.v) for c in cache]


def _eager(net):
    net._decode_layers = lambda *args: None


@pytest.mark.parametrize(("dtype", "kv", "mix"), [
    ("bfloat16", "auto", "q4_k_m"), ("float32", "auto", "q4_k_m"), ("bfloat16", "int8", "q4_k_m"),
    ("float32", "int8", "q4_k_m"), ("bfloat16", "auto", "q8_0"), ("float32", "int8", "q8_0")])
def test_fused_decode_is_the_eager_layer_bit_for_bit(request, dtype, kv, mix):
    path = request.getfixturevalue(f"tiny_{mix}")
    llm = LLM(str(path), max_model_len=256, kv_cache_memory=16 << 20, dtype=dtype,
              kv_cache_dtype=kv, quantize="gguf", enable_prefix_caching=False)
    net = llm.engine.runner.model
    params = SamplingParams(temperature=0, max_tokens=12, logprobs=5, loop_control="off",
                            ignore_eos=True)
    kv = llm.engine.runner.kv
    kv.k.zero_(), kv.v.zero_()
    fused = _logprobs(llm.generate(PROMPTS, params))
    assert net._ggml_layers.num_layers() == 2  # the tiny model's both layers, made once
    rows = _rows(kv)
    kv.k.zero_(), kv.v.zero_()
    _eager(net)
    assert _logprobs(llm.generate(PROMPTS, params)) == fused
    # the cache rows written (int8: codes and scales) are the eager writes', wherever the
    # blocks were
    assert _rows(kv) == rows
    # and one sequence alone gets the numbers it got batched
    alone = _logprobs(llm.generate(PROMPTS[2:], params))
    assert alone == fused[2:]


@pytest.mark.parametrize("mix", ["q4_k_m", "q8_0"])
def test_any_team_of_threads_gives_the_eager_numbers(request, mix):
    """The step's threads split every phase among themselves (one, two, or three on two cores,
    where a thread waits its turn): the numbers are the eager layer's at each count."""
    llm = LLM(str(request.getfixturevalue(f"tiny_{mix}")), max_model_len=256,
              kv_cache_memory=16 << 20, quantize="gguf", enable_prefix_caching=False)
    params = SamplingParams(temperature=0, max_tokens=8, logprobs=5, loop_control="off",
                            ignore_eos=True)
    before = torch.get_num_threads()
    try:
        fused = {}
        for threads in (1, 2, 3):
            torch.set_num_threads(threads)
            fused[threads] = _logprobs(llm.generate(PROMPTS, params))
        assert isinstance(llm.engine.runner.model._ggml_layers, torch.ScriptObject)  # fused
        _eager(llm.engine.runner.model)
        torch.set_num_threads(before)
        eager = _logprobs(llm.generate(PROMPTS, params))
    finally:
        torch.set_num_threads(before)
    assert fused[1] == fused[2] == fused[3] == eager


def test_an_fp8_cache_keeps_the_eager_layer(tiny_q4_k_m):
    llm = LLM(str(tiny_q4_k_m), max_model_len=256, kv_cache_memory=16 << 20,
              kv_cache_dtype="fp8", enable_prefix_caching=False)
    out = llm.generate(PROMPTS[:1], SamplingParams(temperature=0, max_tokens=4, ignore_eos=True))
    assert len(out[0].outputs[0].token_ids) == 4
    assert llm.engine.runner.model._ggml_layers is None  # never asked


def test_the_kernel_names_what_is_wrong(tiny_q4_k_m):
    llm = LLM(str(tiny_q4_k_m), max_model_len=256, kv_cache_memory=16 << 20,
              enable_prefix_caching=False)
    net = llm.engine.runner.model
    (ws, types, parts, norm, bias, post, eps), after = net.layers[0].ggml_decode_args()
    assert after == (0.125, 4, 2)
    head, head_types = net.lm_head.kernel_parts()

    def make(parts=parts, biases=(bias,), heads=after, head=(), head_types=()):
        return torch.classes.qwq.DecodeLayers(ws, types, parts, [norm], list(biases), [post],
                                              norm, list(head), list(head_types), eps, *heads)

    with pytest.raises(RuntimeError, match="parts must add up"):
        make(parts=[1, 1, 1, 99])
    with pytest.raises(RuntimeError, match="4 parts counts"):
        make(biases=[bias, bias])
    with pytest.raises(RuntimeError, match="heads a multiple of kv_heads"):
        make(heads=(0.125, 4, 3))
    with pytest.raises(RuntimeError, match="one type a part of the head"):
        make(head=head, head_types=[])
    x = torch.randn(2, 256, dtype=torch.bfloat16)
    kc = torch.zeros(1, 64, 2, 64, dtype=torch.bfloat16)
    cos, sin = net.rotary.factor_tables(64, torch.bfloat16, x.device)
    step = {"positions": torch.tensor([0, 3]), "cos": cos, "sin": sin, "k_caches": kc,
            "v_caches": kc, "slots": torch.tensor([0, 16]),
            "block_tables": torch.tensor([[0], [1]]), "context_lens": torch.tensor([1, 4]),
            "block_size": 16, "logits_indices": torch.tensor([1, 0])}
    layers = make()

    def run(layers=layers, **changed):
        return layers.step(x, *{**step, **changed}.values())

    with pytest.raises(RuntimeError, match="one int64 position and slot per token"):
        run(slots=torch.zeros(3, dtype=torch.long))
    with pytest.raises(RuntimeError, match="slot 64 is not one of the caches' 64"):
        run(slots=torch.tensor([0, 64]))  # past the cache: refused, not written
    with pytest.raises(RuntimeError, match="slot -1 is not"):
        run(slots=torch.tensor([-1, 0]))
    with pytest.raises(RuntimeError, match="every tensor of a step on the CPU"):
        run(block_tables=torch.tensor([[0], [1]], device="meta"))
    with pytest.raises(RuntimeError, match="CPU tensors"):
        make(biases=[bias.to("meta")])
    with pytest.raises(RuntimeError, match=r"caches \(layers, slots"):
        run(k_caches=kc[0], v_caches=kc[0])
    with pytest.raises(RuntimeError, match=r"cos and sin tables \(positions, 1, head_dim\)"):
        run(cos=cos.float(), sin=sin.float())
    with pytest.raises(IndexError):  # a position past the tables
        run(positions=torch.tensor([0, cos.shape[0]]))
    # a failure inside the threads' shared step (one thread's attention) is raised once, and
    # the object steps on
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        with pytest.raises(RuntimeError, match="context length 40 of sequence 1 does not fit"):
            run(context_lens=torch.tensor([1, 40]))
    finally:
        torch.set_num_threads(before)
    kc.zero_()
    # without a head: the final norm's rows, in the order asked; with one, their logits
    rows = run()
    assert rows.shape == (2, 256) and rows.dtype == torch.bfloat16
    kc.zero_()
    logits = run(make(head=head, head_types=head_types))
    assert torch.equal(logits, net.lm_head(rows.float()))
    kc.zero_()
    assert torch.equal(run(logits_indices=torch.tensor([0])), rows[1:])
    # a new cache (another engine's) in the same object: its own rows, and the old cache is
    # not kept alive by the object
    other = torch.zeros_like(kc)
    kc.zero_()
    assert torch.equal(run(k_caches=other, v_caches=other), rows)
    assert other.any() and not kc.any()
    import weakref
    gone = weakref.ref(other)
    del other
    assert gone() is None


def test_the_demo_models_fused_step_is_its_eager_step(demo_gguf):
    """The demo GGUF's own mix: Q5_0 rows interleaved sixteen at a time (records in units of 32
    inputs), a q|k|v of two types in half the layers, seven query heads a kv head: its fused
    decode at two threads is the eager decode, token for token and logprob for logprob."""
    llm = LLM(str(demo_gguf), max_model_len=256, kv_cache_memory=32 << 20,
              enable_prefix_caching=False)
    params = SamplingParams(temperature=0, max_tokens=12, logprobs=3, loop_control="off",
                            ignore_eos=True)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        fused = _logprobs(llm.generate(PROMPTS, params))
        assert isinstance(llm.engine.runner.model._ggml_layers, torch.ScriptObject)
        _eager(llm.engine.runner.model)
        assert _logprobs(llm.generate(PROMPTS, params)) == fused
    finally:
        torch.set_num_threads(before)
