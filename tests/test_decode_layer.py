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
    net._ggml_decode_args = lambda *args: None


@pytest.mark.parametrize(("dtype", "kv"), [("bfloat16", "auto"), ("float32", "auto"),
                                           ("bfloat16", "int8"), ("float32", "int8")])
def test_fused_decode_is_the_eager_layer_bit_for_bit(tiny_q4_k_m, dtype, kv):
    llm = LLM(str(tiny_q4_k_m), max_model_len=256, kv_cache_memory=16 << 20, dtype=dtype,
              kv_cache_dtype=kv, quantize="gguf", enable_prefix_caching=False)
    net = llm.engine.runner.model
    params = SamplingParams(temperature=0, max_tokens=12, logprobs=5, loop_control="off",
                            ignore_eos=True)
    kv = llm.engine.runner.kv
    kv.k.zero_(), kv.v.zero_()
    fused = _logprobs(llm.generate(PROMPTS, params))
    assert isinstance(net._ggml_layers, tuple) and len(net._ggml_layers[0][3]) == 2  # 2 layers
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


def test_an_fp8_cache_keeps_the_eager_layer(tiny_q4_k_m):
    llm = LLM(str(tiny_q4_k_m), max_model_len=256, kv_cache_memory=16 << 20,
              kv_cache_dtype="fp8", enable_prefix_caching=False)
    out = llm.generate(PROMPTS[:1], SamplingParams(temperature=0, max_tokens=4, ignore_eos=True))
    assert len(out[0].outputs[0].token_ids) == 4
    assert llm.engine.runner.model._ggml_layers is None  # never asked


def test_the_kernel_names_what_is_wrong(tiny_q4_k_m):
    llm = LLM(str(tiny_q4_k_m), max_model_len=256, kv_cache_memory=16 << 20,
              enable_prefix_caching=False)
    layer = llm.engine.runner.model.layers[0]
    (ws, types, parts, bias, post, _, eps), after = layer.ggml_decode_args(None)
    x = torch.zeros(1, 256, dtype=torch.bfloat16)
    kc = torch.zeros(1, 64, 2, 64, dtype=torch.bfloat16)
    cos = torch.zeros(1, 1, 64, dtype=torch.bfloat16)
    assert after == (0.125, 4, 2)
    args = dict(qkv_biases=[bias], post_norms=[post], next_norms=[], eps=eps, cos=cos, sin=cos,
                k_caches=kc, v_caches=kc, slots=torch.zeros(1, dtype=torch.long),
                block_tables=torch.zeros(1, 4, dtype=torch.long),
                context_lens=torch.ones(1, dtype=torch.long), block_size=16, scale=0.125,
                heads=4, kv_heads=2)
    with pytest.raises(RuntimeError, match="parts must add up"):
        torch.ops.qwq.ggml_decode_layers(x, x, ws, types, [1, 1, 1, 99], **args)
    with pytest.raises(RuntimeError, match="one int64 slot per token"):
        torch.ops.qwq.ggml_decode_layers(x, x, ws, types, parts,
                                         **{**args, "slots": torch.zeros(2, dtype=torch.long)})
    with pytest.raises(RuntimeError, match=r"caches \(layers, slots"):
        torch.ops.qwq.ggml_decode_layers(x, x, ws, types, parts,
                                         **{**args, "k_caches": kc[0], "v_caches": kc[0]})
    with pytest.raises(RuntimeError, match="4 parts counts"):
        torch.ops.qwq.ggml_decode_layers(x, x, ws, types, parts,
                                         **{**args, "qkv_biases": [bias, bias]})
    out, nxt = torch.ops.qwq.ggml_decode_layers(x, x, ws, types, parts, **args)
    assert out.shape == (1, 256) and nxt is None
