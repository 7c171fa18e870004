"""int4 from a checkpoint's own codes (issue 15, part 4): Int4Linear.from_codes computes what the
codes stand for (AWQ's (q - z) * s; GGUF's Q4_0, Q4_1, Q4_K blocks), on torch's CPU form of the
tinygemm kernel CUDA runs; an AWQ directory and a 4-bit GGUF load as int4 with their own codes,
tensor by tensor; `auto` picks int4 for them on CUDA and nothing changes on CPU."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from qwq.kernels import ggml
from qwq.model.quant import Int4Linear, Int8Linear, auto_quantization, round_codes
from qwq.weights import awq, open_checkpoint

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "bench"))


def bf16_grid(codes):
    """The weight the kernel holds: the codes on scale and zero rounded to bfloat16."""
    from qwq.weights.stored import GroupCodes
    return GroupCodes(codes.q, codes.scale.bfloat16().float(), codes.zero.bfloat16().float(),
                      codes.group).dequantize()


def close(got, want):
    """bf16 tolerance: 2^-7 of the output's scale."""
    scale = want.abs().max().clamp(min=1e-6)
    return (got.float() - want).abs().max() / scale < 2 ** -7


@pytest.mark.parametrize("shape", [(32, 128), (48, 256), (96, 512)])
@pytest.mark.parametrize("batch", [1, 3, 17])
@pytest.mark.parametrize("group", [32, 128])
def test_awq_codes_compute_awqs_weight(shape, batch, group):
    from test_weights_awq import awq_quantize
    n, k = shape
    qweight, qzeros, scales, deq = awq_quantize(torch.randn(n, k) * 0.05, group)
    codes = awq.group_codes(qweight, qzeros, scales, group)
    assert torch.equal(codes.dequantize(), deq)  # the mapping is exact in float32
    assert torch.equal(codes.dequantize(),
                       awq.dequantize(qweight, qzeros, scales, group, torch.float32))
    layer = Int4Linear.from_codes([codes], None, torch.bfloat16)
    assert layer.group_size == group
    x = torch.randn(batch, k).bfloat16()
    want = x.float() @ deq.t()
    assert close(layer(x), want)
    # the kernel's weight is the codes on the bf16 grid, rounded once more to bf16 on output
    assert torch.equal(layer.dequantized(), bf16_grid(codes).bfloat16())


@pytest.mark.parametrize("qtype", ["Q4_0", "Q4_1", "Q4_K"])
@pytest.mark.parametrize("shape", [(16, 256), (48, 512), (32, 1024)])
@pytest.mark.parametrize("batch", [1, 5])
def test_gguf_blocks_compute_their_dequantized_weight(qtype, shape, batch):
    n, k = shape
    gen = torch.Generator().manual_seed(n * k)
    raw = ggml.random_blocks(qtype, n, k, gen)
    want_w = ggml.dequantize(raw, qtype)
    codes = ggml.group_codes(raw, qtype)
    assert codes.group == 32 and codes.q.dtype == torch.uint8 and int(codes.q.max()) <= 15
    assert torch.allclose(codes.dequantize(), want_w, rtol=0, atol=1e-6 * want_w.abs().max())
    layer = Int4Linear.from_codes([codes], None, torch.bfloat16)
    x = torch.randn(batch, k, generator=gen).bfloat16()
    assert close(layer(x), x.float() @ want_w.t())
    assert torch.equal(layer.dequantized(), bf16_grid(codes).bfloat16())


def test_fused_parts_stack_rows_and_keep_the_bias():
    gen = torch.Generator().manual_seed(3)
    parts = [ggml.group_codes(ggml.random_blocks("Q4_K", rows, 256, gen), "Q4_K")
             for rows in (32, 16, 16)]
    bias = torch.randn(64, generator=gen)
    layer = Int4Linear.from_codes(parts, bias, torch.bfloat16)
    x = torch.randn(4, 256, generator=gen).bfloat16()
    w = torch.cat([p.dequantize() for p in parts])
    assert layer.out_features == 64 and close(layer(x), x.float() @ w.t() + bias)


def test_parts_on_different_grids_are_refused():
    from qwq.errors import QwQError
    a = round_codes(torch.randn(16, 128), 32)
    b = round_codes(torch.randn(16, 128), 64)
    with pytest.raises(QwQError, match="group size"):
        Int4Linear.from_codes([a, b], None, torch.bfloat16)
    with pytest.raises(QwQError, match="groups of"):
        Int4Linear.from_codes([round_codes(torch.randn(16, 128), 16)], None, torch.bfloat16)


def test_auto_on_cuda_is_int4_for_4_bit_checkpoints_only():
    def types(t, down=None):
        out = {f"model.layers.0.{p}.weight": t for p in
               ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
                "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")}
        if down:
            out["model.layers.0.mlp.down_proj.weight"] = down
        return out | {"model.embed_tokens.weight": t}
    bf = torch.bfloat16
    for t in ("Q4_0", "Q4_1", "Q4_K", "AWQ4"):
        assert auto_quantization(types(t, "Q6_K"), bf, "cuda") == "int4", t
    for t in ("Q5_0", "Q5_K", "Q6_K", "Q8_0"):
        assert auto_quantization(types(t), bf, "cuda") == "int8", t
    # tensor-parallel ranks load float slices: int8 there, as before
    assert auto_quantization(types("Q4_K"), bf, "cuda", sharded=True) == "int8"
    # CPU is unchanged: a GGUF as shipped, AWQ in q5_0 blocks (w8a8 without the kernels)
    from qwq.kernels import kernels_available
    assert auto_quantization(types("Q4_K"), bf, "cpu") == "gguf"
    assert auto_quantization(types("AWQ4"), bf, "cpu") == \
        ("q5_0" if kernels_available() else "w8a8")
