"""qwq's block kernels (qwq/kernels): q5_0 and q8_0 weights against int8 activation blocks.

The kernels are checked against the same product written in plain torch, against the GGUF's own
Q5_0/Q8_0 values, and for batch invariance: a token's output has the same bits alone or among
any number of others."""

import gguf
import pytest
import torch
from torch import nn

from qwq.kernels import blocks, kernel_isa, kernels_available
from qwq.model.quant import BlockLinear, Int8Linear, quantize_linear, quantize_model

FORMATS = list(blocks.FORMATS.values())
has_isa = kernel_isa() is not None  # AVX-512 VNNI, or AVX2 with FMA and F16C
kernel = pytest.mark.skipif(not has_isa, reason="the CPU runs neither kernel build")


def _op(fmt):
    return getattr(torch.ops.qwq, f"{fmt.name}_linear")


@kernel
def test_the_kernels_build_on_this_cpu():
    assert kernels_available()  # a CPU with the instructions must get them, not a silent fallback


@pytest.mark.parametrize("fmt", FORMATS, ids=lambda f: f.name)
@pytest.mark.parametrize("k", [384, 896])  # spans of 2 + 1 groups; 4 + 2 + 1
def test_packing_reproduces_its_own_values(fmt, k):
    """Dequantized and packed again, blocks come back bit for bit (how a GGUF's Q5_0 tensors
    keep their values), and the values are within a step of the weights (Q5_0's range is
    [-16, 15] steps, so the far end of a block clamps by up to one)."""
    w = torch.randn(37, k) * 0.05  # rows not a multiple of 4: the last tile is padded
    packed = fmt.pack(w)
    assert packed.shape == (10, k // 128 * 4 * fmt.group_bytes)
    deq = fmt.dequantize(packed, 37, k)
    assert torch.equal(fmt.pack(deq), packed)
    step = w.view(37, -1, 32).abs().amax(-1, keepdim=True) / (16 if fmt.name == "q5_0" else 127)
    assert ((deq - w).view(37, -1, 32).abs() <= step * 1.01).all()


def test_lane_order_is_a_permutation_by_spans():
    assert blocks.spans(38) == [4] * 9 + [2] and blocks.spans(7) == [4, 2, 1]
    order = blocks.lane_order(896)
    assert torch.equal(order.sort().values, torch.arange(896))
    # lane j of a 4-group span's first vector is block j's first word
    assert order[:64].view(16, 4)[:, 0].tolist() == [32 * j for j in range(16)]


@pytest.mark.parametrize("name", ["blk.0.attn_q.weight", "output.weight"])
def test_gguf_blocks_run_with_their_own_values(demo_gguf, name):
    """The demo GGUF's Q5_0 (attn_q) and Q8_0 (the head) tensors, dequantized by gguf and packed,
    dequantize to exactly gguf's values."""
    reader = gguf.GGUFReader(str(demo_gguf))
    t = next(t for t in reader.tensors if t.name == name)
    fmt = {"Q5_0": blocks.Q5_0, "Q8_0": blocks.Q8_0}[t.tensor_type.name]
    w = torch.from_numpy(gguf.quants.dequantize(t.data, t.tensor_type)[:512].copy())
    deq = fmt.dequantize(fmt.pack(w), *w.shape)
    if fmt is blocks.Q5_0:
        assert torch.equal(deq, w)
    else:  # Q8_0 rounds its scale to fp16 after rounding the values: within one value step
        assert (deq - w).abs().max() <= w.abs().amax() / 127 * 1.01


@kernel
@pytest.mark.parametrize("fmt", FORMATS, ids=lambda f: f.name)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("m,n,k", [(1, 96, 128), (3, 201, 896), (11, 64, 256), (70, 130, 640),
                                   (27, 33, 4864)])
def test_kernel_matches_torch(fmt, dtype, m, n, k):
    torch.manual_seed(m * n)
    w = torch.randn(n, k) * 0.05
    packed = fmt.pack(w)
    x = torch.randn(m, k).to(dtype)
    bias = torch.randn(n).to(dtype)
    got = _op(fmt)(x, packed, bias, n)
    want = blocks.linear(fmt, x.float(), packed, bias.float(), n)  # float32 throughout
    assert got.dtype == dtype and got.shape == (m, n)
    tol = 1e-5 if dtype == torch.float32 else 1e-2
    assert (got.float() - want).abs().max() <= tol * want.abs().max()
    assert torch.allclose(_op(fmt)(x, packed, None, n), got - bias, rtol=tol, atol=tol * 10)


@kernel
@pytest.mark.parametrize("fmt", FORMATS, ids=lambda f: f.name)
def test_a_token_gets_the_same_bits_in_any_batch(fmt):
    """Rows, tokens and threads are tiled differently for 1, 3, 9, 17 or 70 tokens (4 rows x 1-4
    tokens in tile_four, 2 rows x 8 or 16 tokens in tile_pair); each output is still the same
    instruction sequence, so greedy text does not depend on the batch."""
    torch.manual_seed(1)
    n, k = 203, 896
    packed = fmt.pack(torch.randn(n, k) * 0.05)
    x = torch.randn(70, k).bfloat16()
    bias = torch.randn(n).bfloat16()
    full = _op(fmt)(x, packed, bias, n)
    for i in (0, 5, 69):
        assert torch.equal(_op(fmt)(x[i:i + 1], packed, bias, n)[0], full[i])
    for a, b in ((4, 7), (1, 10), (30, 47)):
        assert torch.equal(_op(fmt)(x[a:b], packed, bias, n), full[a:b])
    torch.set_num_threads(1)
    try:
        assert torch.equal(_op(fmt)(x, packed, bias, n), full)
    finally:
        torch.set_num_threads(2)


@kernel
def test_kernel_rejects_bad_input_by_name():
    packed = blocks.Q5_0.pack(torch.randn(8, 256))
    op = torch.ops.qwq.q5_0_linear
    with pytest.raises(RuntimeError, match="in_features 200 must be a multiple of 128"):
        op(torch.randn(1, 200), packed, None, 8)
    with pytest.raises(RuntimeError, match="out_features 9"):
        op(torch.randn(1, 256), packed, None, 9)
    with pytest.raises(RuntimeError, match="bias"):
        op(torch.randn(1, 256), packed, torch.zeros(7), 8)
    with pytest.raises(RuntimeError, match="float32, bfloat16 or float16"):
        op(torch.randn(1, 256).double(), packed, None, 8)
    assert op(torch.randn(0, 256), packed, None, 8).shape == (0, 8)


@pytest.mark.parametrize("mode", ["q5_0", "q8_0"])
def test_block_layers_track_the_float_layer_with_or_without_the_kernel(mode):
    lin = nn.Linear(256, 96)
    with torch.no_grad():
        lin.weight.normal_(0, 0.05)
    layer = quantize_linear(lin, mode, torch.bfloat16)
    assert isinstance(layer, BlockLinear)
    x = torch.randn(2, 3, 256).bfloat16()
    ref = lin(x.float())
    got = layer(x)
    assert got.shape == ref.shape
    assert (got.float() - ref).norm() / ref.norm() < (0.05 if mode == "q5_0" else 0.02)
    layer.kernel = None  # the plain-torch path: GPUs, CPUs without the instructions
    assert torch.allclose(layer(x).float(), got.float(), rtol=2e-2, atol=2e-2)


def test_layers_whose_inputs_do_not_fill_groups_fall_back_to_8_bit():
    """A tensor-parallel shard of 448 inputs can't take 128-input groups: that layer is w8a8."""
    lin = nn.Linear(448, 64)
    assert isinstance(quantize_linear(lin, "q5_0", torch.bfloat16), Int8Linear)


def test_q5_0_model_keeps_an_8_bit_head():
    """Every projection goes to q5_0; the head to q8_0."""
    from qwq.config import ModelConfig
    from qwq.model import Qwen2Model
    cfg = ModelConfig(vocab_size=512, hidden_size=128, intermediate_size=256, num_hidden_layers=1,
                      num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=False,
                      torch_dtype="bfloat16")
    m = quantize_model(Qwen2Model(cfg).to(torch.bfloat16), "q5_0")
    layer = m.layers[0]
    assert [x.fmt.name for x in (layer.self_attn.qkv_proj, layer.self_attn.o_proj,
                                 layer.mlp.gate_up_proj, layer.mlp.down_proj)] == ["q5_0"] * 4
    assert m.lm_head.fmt is blocks.Q8_0


# --- the fused per-token layers (qwq/kernels/layers.cpp) against their eager forms ---

def _eager_norm(x, w, eps):
    if x.dtype == torch.float32:
        return torch.nn.functional.rms_norm(x, w.shape, w, eps)
    return w * torch.nn.functional.rms_norm(x.float(), w.shape, None, eps).to(x.dtype)


@kernel
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_fused_rms_norm_and_residual_add(dtype):
    torch.manual_seed(0)
    x, delta = (torch.randn(9, 896) * 3).to(dtype), torch.randn(9, 896).to(dtype)
    w = (torch.rand(896) + 0.5).to(dtype)
    ulp = 1e-6 if dtype == torch.float32 else 1e-2  # one rounding of the 16-bit types
    want = _eager_norm(x, w, 1e-6)
    got = torch.ops.qwq.rms_norm(x, w, 1e-6)
    assert torch.allclose(got.float(), want.float(), rtol=ulp, atol=ulp)
    total, normed = torch.ops.qwq.add_rms_norm(x, delta, w, 1e-6)
    assert torch.equal(total, x + delta)  # the residual add rounds as torch's add does
    assert torch.allclose(normed.float(), _eager_norm(x + delta, w, 1e-6).float(), rtol=ulp,
                          atol=ulp)
    assert torch.equal(torch.ops.qwq.rms_norm(x[3:4], w, 1e-6)[0], got[3])  # batch invariant


@kernel
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fused_silu_mul(dtype):
    gu = (torch.randn(5, 2 * 4864) * 4).to(dtype)
    gate, up = gu.float().split(4864, -1)
    want = torch.nn.functional.silu(gate) * up
    got = torch.ops.qwq.silu_mul(gu)
    tol = 1e-5 if dtype == torch.float32 else 1e-2
    assert torch.allclose(got.float(), want, rtol=tol, atol=tol)
    assert torch.ops.qwq.silu_mul(torch.full((1, 32), -200.0)).eq(0).all()  # e^-200 underflows


@kernel
@pytest.mark.parametrize("vocab", [1, 15, 16, 1000, 151936, 152064])
def test_greedy_tokens_is_torch_argmax_and_finds_nan(vocab):
    """Each row's first index of its largest value (torch.max's pick), -1 for a row with a NaN,
    at vocab sizes with and without a tail of under 16."""
    assert kernels_available()
    g = torch.Generator().manual_seed(vocab)
    logits = torch.randn(6, vocab, generator=g)
    logits[1] = logits[1].round()  # many ties: the first one wins
    logits[2] = float("-inf")
    logits[3, -1] = float("nan")
    logits[4, 0] = float("nan")
    logits[5, vocab // 2:] = logits[5].max() + 1  # ties in the second half, and in the tail
    got = torch.ops.qwq.greedy_tokens(logits).tolist()
    largest, picks = logits.max(-1)
    assert got == picks.masked_fill(largest.isnan(), -1).tolist()
    assert got[3] == got[4] == -1 and got[2] == 0
    assert [torch.ops.qwq.greedy_tokens(logits[i:i + 1]).item() for i in range(6)] == got
    with pytest.raises(RuntimeError, match="float32"):
        torch.ops.qwq.greedy_tokens(logits.bfloat16())


@kernel
@pytest.mark.parametrize("threads", [1, 2, 3])
def test_greedy_tokens_keeps_the_first_largest_at_any_thread_count(threads):
    """A batch of one row of Qwen's vocabulary: ties far apart give the first index, a NaN
    anywhere fails the row, an all -inf row gives 0; a batch's rows are each torch.max's pick."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        vocab = 151936
        row = torch.zeros(1, vocab)
        for places in ([5, vocab - 3], [vocab // 2 + 7, vocab - 1], [vocab // 3, vocab // 2],
                       [vocab - 1]):
            got = row.clone()
            got[0, places] = 3.0
            assert torch.ops.qwq.greedy_tokens(got).item() == places[0]
        nan = row.clone()
        nan[0, vocab - 20] = float("nan")
        assert torch.ops.qwq.greedy_tokens(nan).item() == -1
        assert torch.ops.qwq.greedy_tokens(torch.full((1, vocab), float("-inf"))).item() == 0
        # and rows of a batch are each their own torch.max pick
        logits = torch.randn(5, vocab, generator=torch.Generator().manual_seed(threads)).round()
        assert torch.ops.qwq.greedy_tokens(logits).tolist() == logits.max(-1)[1].tolist()
    finally:
        torch.set_num_threads(before)


@kernel
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("heads,kvh,d", [(14, 2, 64), (10, 2, 128), (4, 4, 32)])
def test_decode_attention_matches_softmax_attention_over_the_paged_cache(dtype, heads, kvh, d):
    """Sequences of different lengths in scattered blocks (positions go in blocks of 16: a
    part block, a whole one and several), GQA (the demo's 14 query heads over 2 kv heads, QwQ's
    5 to a kv head at head_dim 128, and none): the fused op against plain softmax attention
    over each sequence's slots."""
    assert kernels_available()
    torch.manual_seed(0)
    bs = 16
    k_cache = torch.randn(40 * bs, kvh, d).to(dtype)
    v_cache = torch.randn(40 * bs, kvh, d).to(dtype)
    lens = [1, 16, 37, 130]
    tables = torch.zeros(4, 9, dtype=torch.long)
    perm = torch.randperm(40)
    used = 0
    for i, n in enumerate(lens):
        nb = -(-n // bs)
        tables[i, :nb] = perm[used:used + nb]
        used += nb
    q = torch.randn(4, heads, d).to(dtype)
    got = torch.ops.qwq.decode_attention(q, k_cache, v_cache, tables, torch.tensor(lens), bs,
                                         d ** -0.5)
    for i, n in enumerate(lens):
        slots = (tables[i, :, None] * bs + torch.arange(bs)).flatten()[:n]
        k = k_cache[slots].float().repeat_interleave(heads // kvh, 1).transpose(0, 1)
        v = v_cache[slots].float().repeat_interleave(heads // kvh, 1).transpose(0, 1)
        p = (q[i].float()[:, None] @ k.transpose(1, 2) * d ** -0.5).softmax(-1)
        want = (p @ v)[:, 0]
        tol = 1e-5 if dtype == torch.float32 else 1e-2
        assert torch.allclose(got[i].float(), want, rtol=tol, atol=tol), i
        alone = torch.ops.qwq.decode_attention(q[i:i + 1], k_cache, v_cache, tables[i:i + 1],
                                               torch.tensor([n]), bs, d ** -0.5)
        assert torch.equal(alone[0], got[i])
    with pytest.raises(RuntimeError, match="context length 200"):
        torch.ops.qwq.decode_attention(q[:1], k_cache, v_cache, tables[:1], torch.tensor([200]),
                                       bs, 1.0)


def test_a_killed_builds_lock_is_cleared_a_running_ones_kept(tmp_path):
    """torch waits forever on a build directory's lock: one left by a build that was killed
    (older than any build takes) is removed before loading; a fresh one, a build running in
    another process, is left to it."""
    import os
    import time

    from qwq.kernels import STALE_LOCK_S, _clear_stale_lock
    lock = tmp_path / "lock"
    lock.touch()
    _clear_stale_lock(tmp_path)
    assert lock.exists()
    old = time.time() - STALE_LOCK_S - 60
    os.utime(lock, (old, old))
    _clear_stale_lock(tmp_path)
    assert not lock.exists()
    _clear_stale_lock(tmp_path / "none")  # no directory, no lock: nothing to do
