"""Quantized linear layers against float references, the auto format, and the demo model's
perplexity in its auto format against llama.cpp's on the same GGUF and text."""

import pytest
import torch
from torch import nn

from qwq.kernels import kernels_available
from qwq.model.quant import (Int4Linear, Int8Linear, QUANT_MODES, auto_quantization,
                             quantize_linear, quantize_rows)


def _linear(k=256, n=96, bias=True):
    lin = nn.Linear(k, n, bias=bias)
    with torch.no_grad():
        lin.weight.normal_(0, 0.05)
    return lin


def test_quantize_rows_one_scale_per_token():
    x = torch.randn(5, 64) * torch.tensor([0.01, 1, 10, 100, 1000]).unsqueeze(1)
    q, s, outliers = quantize_rows(x.bfloat16())
    assert q.dtype == torch.int8 and s.shape == (5, 1) and not outliers.any()
    assert q.abs().amax(1).tolist() == [127] * 5  # every row uses its whole range
    assert torch.allclose(q.float() * s, x.bfloat16().float(), rtol=0, atol=float(s.max()) / 2)


def test_w8a8_is_integer_dot_products_rescaled():
    lin = _linear()
    x = torch.randn(7, 256).bfloat16()
    layer = Int8Linear(lin.weight.data, lin.bias.data, torch.bfloat16, int8_activations=True)
    xq, xs, _ = quantize_rows(x)
    exact = (xq.long() @ layer.weight.long().t()).double() * xs.double() * layer.scale.double()
    want = (exact + lin.bias.data.bfloat16().double()).float()
    got = layer(x).float()
    assert torch.allclose(got, want, rtol=2e-2, atol=2e-2)
    ref = lin(x.float())
    assert (got - ref).abs().max() / ref.abs().max() < 0.03  # and close to the float layer


def test_w8a8_outlier_tokens_keep_16_bit_activations():
    """A token with one huge activation (an attention sink) loses the rest of its values to
    per-token int8; those rows take the weight-only path instead."""
    lin = _linear(k=1024, bias=False)
    x = torch.randn(4, 1024) * 0.1
    x[2, 7] = 200.0  # peak / rms ~ 32 (sqrt(1024) at most): above OUTLIER_RATIO
    x = x.bfloat16()
    _, _, outliers = quantize_rows(x)
    assert outliers.tolist() == [False, False, True, False]
    w8a8 = Int8Linear(lin.weight.data, None, torch.bfloat16, int8_activations=True)
    weight_only = Int8Linear(lin.weight.data, None, torch.bfloat16)
    got, want = w8a8(x), weight_only(x)
    assert torch.equal(got[2], want[2])
    ref = lin(x.float())
    plain = (torch._int_mm(*quantize_rows(x)[:1], w8a8.weight.t()).float()
             * quantize_rows(x)[1] * w8a8.scale)[2]
    assert (got[2].float() - ref[2]).norm() < (plain - ref[2]).norm() / 1.5


@pytest.mark.parametrize("mode", ["int8", "w8a8", "int4"])
def test_quantized_layers_track_the_float_layer(mode):
    lin = _linear(bias=False)
    x = torch.randn(3, 1, 256).bfloat16()  # any leading shape
    layer = quantize_linear(lin, mode, torch.bfloat16)
    assert isinstance(layer, Int4Linear if mode == "int4" else Int8Linear)
    ref = lin(x.float())
    got = layer(x).float()
    assert got.shape == ref.shape
    tol = 0.15 if mode == "int4" else 0.03
    assert (got - ref).norm() / ref.norm() < tol


def test_auto_format_from_gguf_types():
    types = {"model.layers.0.mlp.down_proj.weight": "Q5_0",
             "model.layers.0.self_attn.q_proj.weight": "Q5_0",
             "model.layers.0.self_attn.k_proj.weight": "F16"}
    # a GGUF runs as shipped on CPU, 8-bit or not; 8-bit weights on GPUs
    gguf = "gguf" if kernels_available() else "w8a8"
    assert auto_quantization(types, torch.bfloat16, "cpu") == gguf
    assert auto_quantization(types, torch.bfloat16, "cuda") == "int8"
    q8 = {n: "Q8_0" for n in types}
    assert auto_quantization(q8, torch.bfloat16, "cpu") == gguf
    # an AWQ directory packs into q5_0 on its own scales where the kernel builds
    awq = dict.fromkeys(types, "AWQ4")
    assert auto_quantization(awq, torch.bfloat16, "cpu") == \
        ("q5_0" if kernels_available() else "w8a8")
    assert auto_quantization(types, torch.float32, "cpu") == "none"  # float32 runs stay float
    assert auto_quantization({}, torch.bfloat16, "cpu") == "none"  # safetensors: as stored
    assert set(QUANT_MODES) == {"none", "gguf", "int8", "w8a8", "int4", "q5_0", "q8_0"}


def test_auto_leaves_gguf_blocks_where_the_kernels_do_not_run(monkeypatch):
    """On a CPU without qwq's kernels a GGUF's blocks would be dequantized in torch on every
    call (0.7 tok/s on the demo GGUF); auto takes w8a8 there (16 tok/s), the explicit "gguf"
    still computes as shipped."""
    import qwq.model.quant as quant
    types = {f"model.layers.0.mlp.{p}.weight": "Q4_K" for p in ("gate_proj", "up_proj")}
    monkeypatch.setattr(quant, "kernels_available", lambda: False)
    assert auto_quantization(types, torch.bfloat16, "cpu") == "w8a8"
    assert auto_quantization(dict.fromkeys(types, "Q8_0"), torch.bfloat16, "cpu") == "w8a8"
    monkeypatch.setattr(quant, "kernels_available", lambda: True)
    assert auto_quantization(types, torch.bfloat16, "cpu") == "gguf"


def test_unknown_format_is_named(tmp_path):
    from qwq.errors import QwQError
    from qwq import LLM
    with pytest.raises(QwQError, match="int3"):
        LLM(None, quantize="int3")


@pytest.fixture(scope="module")
def ppl_chunks(tokenizer):
    from qwq import benchmark as B
    return B.ppl_windows(tokenizer, B.FULL["ppl_window"], B.FULL["ppl_windows"])


@pytest.fixture(scope="module")
def llama_cpp_ppl(demo_gguf):
    """llama-perplexity on the same file and text, in its own process (a crash of the peer is
    this fixture's PeerError, never the test run's end)."""
    from qwq import benchmark as B
    from qwq.benchmark import llama_cpp
    return llama_cpp.perplexity(str(demo_gguf), B.ppl_text(), B.FULL["ppl_window"],
                                B.FULL["ppl_windows"], threads=2)


@pytest.mark.slow
@pytest.mark.parametrize("fmt, bar", [("auto", 1.003), ("q5_0", 1.02), ("w8a8", 1.02)])
def test_demo_perplexity_against_llama_cpp(ppl_chunks, llama_cpp_ppl, fmt, bar):
    """On the demo GGUF, against llama-perplexity on the same file and text, scored on the
    same positions: `auto` computes the file as shipped (its own types, llama.cpp's int8
    activation blocks) and stays within 0.3%; the repacked formats (q5_0 rounds the Q4_K and
    Q6_K tensors a second time, w8a8 all of them) within 2%."""
    from qwq import benchmark as B
    llm = B.qwq_llm(None, fmt)
    if fmt == "auto":
        assert llm.engine.config.quantize == "gguf"
    ours = B.qwq_ppl(llm, ppl_chunks)
    assert ours / llama_cpp_ppl < bar, (ours, llama_cpp_ppl)
