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
sys.path.append(str(ROOT / "tests"))


def bf16_grid(codes):
    """The weight the kernel holds: the codes on scale and zero rounded to bfloat16."""
    from qwq.stored import GroupCodes
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
    assert auto_quantization(types("Q4_K"), bf, "cpu") == \
        ("gguf" if kernels_available() else "w8a8")
    assert auto_quantization(types("AWQ4"), bf, "cpu") == \
        ("q5_0" if kernels_available() else "w8a8")


def last_logits(net, prompt: list[int]) -> torch.Tensor:
    """The float32 logits after a prompt, through the engine's scheduler and runner."""
    from qwq.config import EngineConfig
    from qwq.engine.kv_cache import BlockManager
    from qwq.engine.runner import ModelRunner
    from qwq.engine.scheduler import Scheduler
    from qwq.engine.sequence import Sequence
    from qwq.sampling_params import SamplingParams
    cfg = EngineConfig(max_num_batched_tokens=256, block_size=16)
    sched = Scheduler(cfg, BlockManager(16, 16, enable_prefix_caching=False))
    runner = ModelRunner(net, 16, 16, net.dtype)
    sched.add(Sequence(0, "0", 0, list(prompt), SamplingParams(temperature=0)))
    ids, meta, _ = runner.prepare(sched.schedule())
    with torch.no_grad():
        return net(ids, meta, runner.kv)[0].float()


PARTS = {"qkv_proj": ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
         "o_proj": ("self_attn.o_proj",), "gate_up_proj": ("mlp.gate_proj", "mlp.up_proj"),
         "down_proj": ("mlp.down_proj",)}


def projections(layer):
    return {"qkv_proj": layer.self_attn.qkv_proj, "o_proj": layer.self_attn.o_proj,
            "gate_up_proj": layer.mlp.gate_up_proj, "down_proj": layer.mlp.down_proj}


@pytest.mark.parametrize("group", [32, 64])
def test_awq_directory_loads_as_int4_with_its_own_codes(tmp_path, tiny_config, group):
    """quantize="int4" on an AWQ directory: every projection holds AWQ's codes on its own
    groups (the kernel's weight is exactly AWQ's codes on the bf16-rounded grid, where a
    second rounding from the dequantized weight differs), the head int8, and the logits
    follow the float model of the weights AWQ stands for."""
    from test_weights_awq import write_awq_pair

    from qwq.models import build_model
    from qwq.weights import expected_shapes
    state = {n: torch.randn(s) * 0.1 for n, s in expected_shapes(tiny_config).items()}
    awq_dir, plain_dir = write_awq_pair(state, tiny_config, tmp_path, group=group)
    ckpt, plain = open_checkpoint(awq_dir), open_checkpoint(plain_dir)
    net = build_model(ckpt, torch.bfloat16, torch.device("cpu"), int4=True)
    assert isinstance(net.lm_head, Int8Linear)
    assert all(t.device.type == "cpu" for t in (*net.parameters(), *net.buffers()))
    rerounded_differs = False
    for i, layer in enumerate(net.layers):
        for fused, linear in projections(layer).items():
            assert isinstance(linear, Int4Linear) and linear.group_size == group
            codes = [ckpt.group_codes(f"model.layers.{i}.{p}.weight") for p in PARTS[fused]]
            want = torch.cat([bf16_grid(c) for c in codes]).bfloat16()
            got = linear.dequantized()
            assert torch.equal(got, want), (i, fused)
            # the codes, read back from the kernel's weight, are AWQ's own
            sz = linear.scales_zeros.float()  # (k / g, n, 2)
            s = sz[..., 0].t().repeat_interleave(group, 1)
            z = sz[..., 1].t().repeat_interleave(group, 1)
            q = ((got.float() - z) / s).round() + 8
            assert torch.equal(q.to(torch.uint8), torch.cat([c.q for c in codes]))
            deq = torch.cat([plain.load(f"model.layers.{i}.{p}.weight", torch.float32)
                             for p in PARTS[fused]])
            again = Int4Linear(deq, None, torch.bfloat16, group).dequantized()
            rerounded_differs |= not torch.equal(again, got)
            if linear.bias is not None:
                bias = torch.cat([plain.load(f"model.layers.{i}.{p}.bias") for p in
                                  PARTS[fused] if p != "self_attn.o_proj"])
                assert torch.equal(linear.bias, bias.bfloat16())
    assert rerounded_differs  # a second rounding would not have kept them
    ref = build_model(plain, torch.bfloat16, torch.device("cpu"))
    for prompt in ([1, 17, 250, 3, 99], [5] * 20, list(range(40, 80))):
        a, b = last_logits(net, prompt), last_logits(ref, prompt)
        assert (a - b).norm() / b.norm() < 0.03, prompt
        assert a.argmax() == b.argmax()


def test_int4_on_cpu_through_the_engine_and_unchanged_auto(tmp_path, tiny_config, tokenizer):
    """qwq.LLM with quantize="int4" on an AWQ directory runs the int4 layers and answers like
    its float directory; quantize="auto" on CPU still packs AWQ into q5_0 (w8a8)."""
    from test_weights_awq import write_awq_pair

    from qwq import LLM, SamplingParams
    from qwq.kernels import kernels_available
    from qwq.weights import expected_shapes
    cfg = tiny_config.replace(vocab_size=tokenizer.vocab_size)
    state = {n: torch.randn(s) * 0.1 for n, s in expected_shapes(cfg).items()}
    dirs = write_awq_pair(state, cfg, tmp_path, group=32)
    for d in dirs:
        tokenizer.save(d)
    params = SamplingParams(temperature=0, max_tokens=8)
    int4 = LLM(str(dirs[0]), quantize="int4", dtype="bfloat16", max_model_len=128)
    assert int4.engine.config.quantize == "int4"
    assert isinstance(int4.engine.runner.model.layers[0].mlp.down_proj, Int4Linear)
    ids = [[11, 502, 33, 7, 900]]
    got = int4.generate(ids, params)[0].outputs[0].token_ids
    assert len(got) == 8
    auto = LLM(str(dirs[0]), max_model_len=128)
    assert auto.engine.config.quantize == ("q5_0" if kernels_available() else "w8a8")


def test_q4_k_m_gguf_loads_as_int4(tiny_q4_k_m):
    """A Q4_K_M file with quantize="int4" on CPU: its Q4_K projections are the file's codes
    exactly (groups of 32), its Q6_K ones re-rounded at groups of 32, the token table stays in
    its blocks, the Q6_K head is int8; next-token choices follow the float model's."""
    from qwq import LLM, SamplingParams
    from qwq.model.ggml_linear import GGMLEmbedding
    from qwq.model.quant import stored_codes
    ckpt = open_checkpoint(tiny_q4_k_m)
    types = ckpt.gguf_types()
    llm = LLM(str(tiny_q4_k_m), quantize="int4", max_model_len=256, kv_cache_memory=16 << 20)
    assert llm.engine.config.quantize == "int4"
    net = llm.engine.runner.model
    assert isinstance(net.embed_tokens, GGMLEmbedding) and isinstance(net.lm_head, Int8Linear)
    seen = set()
    for i, layer in enumerate(net.layers):
        for fused, linear in projections(layer).items():
            assert isinstance(linear, Int4Linear) and linear.group_size == 32
            names = [f"model.layers.{i}.{p}.weight" for p in PARTS[fused]]
            rows = []
            for n in names:
                raw = ckpt.stored(n)
                seen.add(raw.qtype)
                if raw.qtype in ggml.INT4_EXACT:
                    rows.append(bf16_grid(ggml.group_codes(raw.data, raw.qtype)).bfloat16())
                else:  # re-rounded: close to the file's values
                    c = stored_codes(raw)
                    w = ggml.dequantize(raw.data, raw.qtype)
                    assert (c.dequantize() - w).abs().max() <= 0.51 * c.scale.max() + 1e-9
                    rows.append(bf16_grid(c).bfloat16())
            assert torch.equal(linear.dequantized(), torch.cat(rows)), (i, fused)
    assert seen == {"Q4_K", "Q6_K"} and types["lm_head.weight"] == "Q6_K"
    ref = LLM(str(tiny_q4_k_m), quantize="none", max_model_len=256, kv_cache_memory=16 << 20)
    ids = [[11, 502, 9000, 33, 7, 4242, 15, 88]]
    params = SamplingParams(temperature=0, max_tokens=1, prompt_logprobs=5)
    a = llm.generate(ids, params)[0].prompt_logprobs[1:]
    b = ref.generate(ids, params)[0].prompt_logprobs[1:]
    # random blocks make a sharp, brittle model, and re-rounding its uniform 6-bit Q6_K codes
    # to 4 bits moves some near choices: most top tokens agree, and the float model's top
    # token is always among int4's top five
    agree = sum(max(x, key=x.get) == max(y, key=y.get) for x, y in zip(a, b, strict=True))
    assert agree >= len(b) - 2, (a, b)
    assert all(max(y, key=y.get) in x for x, y in zip(a, b, strict=True)), (a, b)


@pytest.mark.parametrize("qtype", ["Q4_0", "Q4_1", "Q5_0", "Q8_0", "Q4_K", "Q5_K", "Q6_K"])
def test_codes_and_decoders_stay_on_the_blocks_device(qtype):
    """On a GPU the blocks' codes are taken (and other types decoded) on the device: run on
    the meta device, any constant made on the CPU would fail to broadcast, as on CUDA."""
    from qwq.model.quant import stored_codes
    from qwq.stored import StoredTensor
    raw = ggml.random_blocks(qtype, 4, 256)
    meta = raw.to("meta")
    assert ggml.dequantize(meta, qtype).device.type == "meta"
    assert ggml.rows(meta, qtype, torch.tensor([1, 2], device="meta")).device.type == "meta"
    if qtype in ggml.INT4_EXACT:
        assert ggml.group_codes(meta, qtype).q.device.type == "meta"
    codes = stored_codes(StoredTensor(raw, qtype, (4, 256)), "meta")
    assert codes.q.device.type == "meta" and codes.group == 32
    # and on the CPU the re-rounded types stay within half a step of the file's values
    if qtype not in ggml.INT4_EXACT:
        c = stored_codes(StoredTensor(raw, qtype, (4, 256)))
        w = ggml.dequantize(raw, qtype)
        step = c.scale.repeat_interleave(32, 1)
        assert ((c.dequantize() - w).abs() <= 0.5 * step + 1e-7).all()


def test_an_awq_group_tinygemm_lacks_is_rounded_on_its_nearest(tmp_path, tiny_config):
    """AWQ at groups of 16 (tinygemm takes 32-256): the one case rounded a second time, from
    AWQ's own values, at groups of 32."""
    from test_weights_awq import write_awq_pair

    from qwq.models import build_model
    from qwq.weights import expected_shapes
    state = {n: torch.randn(s) * 0.1 for n, s in expected_shapes(tiny_config).items()}
    awq_dir, plain_dir = write_awq_pair(state, tiny_config, tmp_path, group=16)
    net = build_model(open_checkpoint(awq_dir), torch.bfloat16, torch.device("cpu"), int4=True)
    down = net.layers[0].mlp.down_proj
    assert down.group_size == 32
    want = open_checkpoint(plain_dir).load("model.layers.0.mlp.down_proj.weight", torch.float32)
    assert (down.dequantized().float() - want).norm() / want.norm() < 0.1


def test_int4_on_cuda_computes_in_bfloat16():
    """tinygemm on CUDA takes bf16 activations only: AWQ's float16 config becomes bf16 under
    dtype auto, an explicit float16 is refused by name; other modes and CPU are untouched."""
    from qwq.compose import _int4_dtype
    from qwq.errors import QwQError
    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    assert _int4_dtype("int4", "auto", torch.float16, cuda) == torch.bfloat16
    assert _int4_dtype("int4", "auto", torch.bfloat16, cuda) == torch.bfloat16
    assert _int4_dtype("int8", "auto", torch.float16, cuda) == torch.float16
    assert _int4_dtype("int4", "float16", torch.float16, cpu) == torch.float16
    with pytest.raises(QwQError, match="bfloat16"):
        _int4_dtype("int4", "float16", torch.float16, cuda)


_LOAD = """
import json, sys
import torch
from qwq.benchmark.machine import peak_rss_mib, reset_peak_rss, rss_mib
from qwq import LLM
from qwq.models import load_tokenizer
load_tokenizer(sys.argv[1])
base = rss_mib()
reset_peak_rss()
llm = LLM(sys.argv[1], max_model_len=256, kv_cache_memory=8 << 20, enable_prefix_caching=False,
          quantize="int4")
net = llm.engine.runner.model
table = net.embed_tokens.raw  # a view of the file, not held
held = sum(t.numel() * t.element_size() for t in (*net.parameters(), *net.buffers())
           if t is not table)
print(json.dumps({"base": base, "peak": peak_rss_mib(), "held_mib": held / 2**20,
                  "format": llm.engine.config.quantize}))
"""


def test_int4_loading_makes_no_float_copy_of_the_model(tmp_path):
    """A Q4_K_M GGUF loads as int4 one tensor at a time: peak memory while loading stays
    within what the int4 model holds plus a slab's temporaries, well under the model in 16
    bits (its head and table alone would be 2 x 297 MiB here)."""
    import json
    import subprocess

    import random_gguf
    path = tmp_path / "small.gguf"
    random_gguf.write(path, "small", "q4_k_m")
    proc = subprocess.run([sys.executable, "-c", _LOAD, str(path)], capture_output=True,
                          text=True, timeout=600, check=False, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    assert res["format"] == "int4"
    bf16_mib = (4 * (1024 * (1024 + 2 * 256 + 1024) + 3 * 1024 * 2816) + 2 * 151936 * 1024) \
        * 2 / 2**20
    grew = res["peak"] - res["base"]
    assert grew < res["held_mib"] + 192 and grew < 0.5 * bf16_mib, (res, bf16_mib)
