"""AWQ directories (AutoAWQ's GEMM layout, as Qwen publishes QwQ-32B-Preview-AWQ): the nibble
order against AutoAWQ's, a directory read back as its dequantized weights, the format `auto`
picks, and bad ones refused by name."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

from qwq.errors import CheckpointError
from qwq.models import build_model
from qwq.weights import expected_shapes, open_checkpoint, save_safetensors_dir
from qwq.weights.awq import pack, unpack

GROUP = 32
AWQ_CONFIG = {"quant_method": "awq", "bits": 4, "group_size": GROUP, "zero_point": True,
              "version": "gemm"}


def test_nibble_order_is_autoawqs():
    # AutoAWQ packs columns 0..7 of a word at nibbles in the order 0, 2, 4, 6, 1, 3, 5, 7
    cols = torch.arange(8).view(1, 8)
    assert pack(cols).item() == 0x75316420
    values = torch.randint(0, 16, (5, 64))
    assert torch.equal(unpack(pack(values)), values)


@pytest.mark.parametrize("fmt", ["q5_0", "q8_0"])
def test_blocks_pack_awq_weights_on_their_own_grid(fmt):
    """Given the AWQ group scales, q5_0/q8_0 blocks hold the AWQ weights exactly, even from
    their bf16 rounding; without them the format's own rounding moves them (a second
    quantization)."""
    from qwq.kernels import blocks
    from qwq.weights.awq import block_scales
    torch.manual_seed(0)
    _, _, scales, deq = awq_quantize(torch.randn(24, 512) * 0.05, 128)
    f = blocks.FORMATS[fmt]
    hint = block_scales(scales, 128)
    hint.scales[5] = float("nan")  # a row with no checkpoint scale rounds as usual
    off = deq.clone()
    off[7, :32] += 0.3 * scales[0, 7].float()  # a block off its grid rounds as usual too
    got = f.dequantize(f.pack(off.bfloat16(), scales=hint), 24, 512)
    plain = f.dequantize(f.pack(off.bfloat16()), 24, 512)
    rest = [r for r in range(24) if r not in (5, 7)]
    assert torch.equal(got[rest], deq[rest]) and torch.equal(got[7, 32:], deq[7, 32:])
    assert torch.equal(got[5], plain[5]) and torch.equal(got[7, :32], plain[7, :32])
    if fmt == "q5_0":
        assert not torch.equal(plain[rest], deq[rest])


def awq_quantize(w: torch.Tensor, group: int = GROUP):
    """(out, in) float weight -> qweight, qzeros, scales, and the weight they stand for
    (round-to-nearest: AWQ's format, without its activation-aware search)."""
    n, k = w.shape
    g = w.t().reshape(k // group, group, n)
    lo, hi = g.amin(1).clamp(max=0), g.amax(1).clamp(min=0)
    scales = ((hi - lo) / 15).clamp(min=1e-4).half()
    s = scales.float()[:, None]
    zeros = (-lo / scales.float()).round().clamp(0, 15)
    q = (g / s + zeros[:, None]).round().clamp(0, 15)
    deq = ((q - zeros[:, None]) * s).reshape(k, n).t()
    return pack(q.reshape(k, n).int()), pack(zeros.int()), scales, deq


def write_awq_pair(state: dict[str, torch.Tensor], config, out, group: int = GROUP):
    """(an AWQ directory of `state`, a float32 directory of the weights it stands for)."""
    packed, plain = {}, {}
    for name, t in state.items():
        if name.endswith("proj.weight"):
            qweight, qzeros, scales, deq = awq_quantize(t.float(), group)
            prefix = name[: -len(".weight")]
            packed |= {prefix + ".qweight": qweight, prefix + ".qzeros": qzeros,
                       prefix + ".scales": scales}
            plain[name] = deq
        else:
            packed[name] = plain[name] = t.half()
    awq = out / "awq"
    awq.mkdir()
    save_file({n: t.contiguous() for n, t in packed.items()}, str(awq / "model.safetensors"))
    hf = config.to_hf_dict() | {"torch_dtype": "float16",
                                "quantization_config": AWQ_CONFIG | {"group_size": group}}
    (awq / "config.json").write_text(json.dumps(hf))
    return awq, save_safetensors_dir(plain, config, out / "float", torch.float32)


@pytest.fixture
def dirs(tmp_path, tiny_config):
    torch.manual_seed(0)
    state = {n: torch.randn(s) * 0.1 for n, s in expected_shapes(tiny_config).items()}
    return write_awq_pair(state, tiny_config, tmp_path)


def test_awq_directory_reads_as_its_dequantized_weights(dirs):
    awq, plain = (open_checkpoint(d) for d in dirs)
    assert sorted(awq.tensor_names()) == sorted(plain.tensor_names())
    assert not any(n.endswith(("qweight", "qzeros", "scales")) for n in awq.tensor_names())
    got, want = dict(awq.iter_tensors(torch.float32)), dict(plain.iter_tensors(torch.float32))
    for name, tensor in want.items():
        assert torch.equal(got[name], tensor), name
    name = "model.layers.1.mlp.down_proj.weight"
    assert torch.equal(awq.load_slice(name, 0, 8, 24, torch.float32), want[name][8:24])
    assert torch.equal(awq.load_slice(name, 1, 32, 64, torch.float32), want[name][:, 32:64])
    # the network built from either holds the same numbers
    a, b = (build_model(c, torch.float32, torch.device("cpu")) for c in (awq, plain))
    for (na, pa), (nb, pb) in zip(a.named_parameters(), b.named_parameters()):
        assert na == nb and torch.equal(pa, pb), na


@pytest.mark.parametrize("fmt", ["q5_0", "q8_0"])
def test_a_built_model_packs_every_awq_linear_exactly(tmp_path, tiny_config, fmt):
    """Checkpoint -> load_weights (fused q|k|v and gate|up rows) -> quantize_model: every
    projection's blocks hold the AWQ weights bit for bit, from bf16, and no scales stay."""
    from qwq.model.quant import quantize_model
    cfg = tiny_config.replace(hidden_size=256, intermediate_size=256, head_dim=64)
    torch.manual_seed(1)
    state = {n: torch.randn(s) * 0.05 for n, s in expected_shapes(cfg).items()}
    awq, plain = (open_checkpoint(d) for d in write_awq_pair(state, cfg, tmp_path, group=128))
    want = dict(plain.iter_tensors(torch.float32))
    net = quantize_model(build_model(awq, torch.bfloat16, torch.device("cpu"),
                                     block_scales=True), fmt, head_mode="int8")
    assert net.pending_scales == {}
    for i, layer in enumerate(net.layers):
        p = f"model.layers.{i}."
        for linear, parts in ((layer.self_attn.qkv_proj, ("self_attn.q_proj", "self_attn.k_proj",
                                                          "self_attn.v_proj")),
                              (layer.self_attn.o_proj, ("self_attn.o_proj",)),
                              (layer.mlp.gate_up_proj, ("mlp.gate_proj", "mlp.up_proj")),
                              (layer.mlp.down_proj, ("mlp.down_proj",))):
            expect = torch.cat([want[p + part + ".weight"] for part in parts])
            got = linear.fmt.dequantize(linear.packed, linear.out_features, linear.in_features)
            assert torch.equal(got, expect), (i, parts)


def test_block_scales_only_for_projections(tiny_config):
    from qwq.kernels.blocks import BlockScales
    from qwq.model import Qwen2Model
    net = Qwen2Model(tiny_config)
    scales = BlockScales(torch.ones(tiny_config.hidden_size, 1, dtype=torch.float16), 64)
    with pytest.raises(CheckpointError, match="no projection"):
        net.load_weights([("model.norm.weight", scales)])


def test_auto_takes_awq_like_a_4_bit_gguf(dirs):
    from qwq.kernels import kernels_available
    from qwq.model.quant import auto_quantization
    types = open_checkpoint(dirs[0]).weight_types()
    assert set(types.values()) == {"AWQ4"} and len(types) == 2 * 7
    assert auto_quantization(types, torch.bfloat16, "cpu") == \
        ("q5_0" if kernels_available() else "w8a8")
    # on GPUs: int4 from AWQ's own codes (tests/test_int4_exact.py)
    assert auto_quantization(types, torch.bfloat16, "cuda") == "int4"
    assert open_checkpoint(dirs[1]).weight_types() == {}


def _edit_config(d, **changes):
    cfg = json.loads((d / "config.json").read_text())
    cfg["quantization_config"] |= changes
    (d / "config.json").write_text(json.dumps(cfg))


@pytest.mark.parametrize("changes, match", [
    ({"quant_method": "gptq"}, "quant_method='gptq' is not supported"),
    ({"version": "gemv"}, "GEMM layout"),
    ({"bits": 8}, "bits=8"),
    ({"zero_point": False}, "zero points"),
    ({"group_size": 0}, "group_size"),
])
def test_unsupported_quantization_is_named(dirs, changes, match):
    _edit_config(dirs[0], **changes)
    with pytest.raises(CheckpointError, match=match):
        open_checkpoint(dirs[0])


UP = "model.layers.0.mlp.up_proj"


@pytest.mark.parametrize("change, match", [
    (lambda t: t.pop(UP + ".qzeros"), "up_proj has qweight but no qzeros"),
    (lambda t: t.update({UP + ".scales": torch.ones(3, 128, dtype=torch.float16)}),
     "up_proj.scales"),
    (lambda t: t.update({UP + ".scales": t[UP + ".scales"].int()}), "F16/BF16/F32"),
    (lambda t: t.update({UP + ".weight": torch.zeros(128, 64)}),
     "both a float weight and AWQ qweight"),
    (lambda t: t.pop(UP + ".qweight"), "belongs to no qweight"),
], ids=["no-qzeros", "scales-shape", "int-scales", "float-beside-qweight", "stray-parts"])
def test_malformed_awq_linears_are_named_at_open(dirs, change, match):
    from safetensors.torch import load_file
    tensors = load_file(str(dirs[0] / "model.safetensors"))
    change(tensors)
    save_file(tensors, str(dirs[0] / "model.safetensors"))
    with pytest.raises(CheckpointError, match=match):
        open_checkpoint(dirs[0])


def test_int32_tensors_need_an_awq_config(dirs):
    cfg = json.loads((dirs[0] / "config.json").read_text())
    del cfg["quantization_config"]
    (dirs[0] / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="not AWQ-packed weights"):
        open_checkpoint(dirs[0])


@pytest.mark.slow
def test_demo_model_as_awq_answers_like_its_float_weights(tmp_path, demo_gguf, tokenizer):
    """The demo model's weights as a 4-bit AWQ directory (groups of 128) with its tokenizer:
    qwq.LLM on it gives, in float32, the greedy answer of the float directory holding the
    weights it stands for; with the defaults (bf16, auto) it runs as q5_0 and answers."""
    from qwq import LLM, SamplingParams
    from qwq.kernels import kernels_available
    ckpt = open_checkpoint(demo_gguf)
    awq, plain = write_awq_pair(dict(ckpt.iter_tensors(torch.float32)), ckpt.config, tmp_path,
                                group=128)
    for d in (awq, plain):
        tokenizer.save(d)
    msgs = [{"role": "user", "content": "Write a Python function that reverses a string."}]
    params = SamplingParams(temperature=0, max_tokens=24)
    want, got = (LLM(str(d), dtype="float32").chat(msgs, params)[0].outputs[0].token_ids
                 for d in (plain, awq))
    assert got == want
    llm = LLM(str(awq))
    assert llm.engine.config.quantize == ("q5_0" if kernels_available() else "w8a8")
    assert "def" in llm.chat(msgs, params)[0].outputs[0].text
    if kernels_available():  # q5_0 blocks on AWQ's grid: the AWQ weights exactly
        weights = dict(open_checkpoint(plain).iter_tensors(torch.float32))
        mlp = llm.engine.runner.model.layers[3].mlp
        for layer, names in ((mlp.gate_up_proj, ("gate_proj", "up_proj")),
                             (mlp.down_proj, ("down_proj",))):
            want = torch.cat([weights[f"model.layers.3.mlp.{n}.weight"] for n in names])
            got = layer.fmt.dequantize(layer.packed, layer.out_features, layer.in_features)
            assert torch.equal(got, want)
