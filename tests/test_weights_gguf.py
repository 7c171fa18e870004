"""GGUF checkpoints: tiny synthetic qwen2 files in every supported type, corrupt files that
must fail fast with a CheckpointError, and the real demo model."""

from __future__ import annotations

import struct
import time
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import torch
from gguf import GGML_QUANT_SIZES, GGUFWriter
from gguf import GGMLQuantizationType as Q
from gguf.quants import dequantize, quantize

from qwq.config import PRESETS, ModelConfig
from qwq.errors import CheckpointError
from qwq.weights import expected_shapes, open_checkpoint
from qwq.weights.gguf_file import hf_name

GLOBAL = ["token_embd.weight", "output_norm.weight", "output.weight"]
LAYER = ["attn_norm.weight", "ffn_norm.weight", "attn_q.weight", "attn_q.bias", "attn_k.weight",
         "attn_k.bias", "attn_v.weight", "attn_v.bias", "attn_output.weight", "ffn_gate.weight",
         "ffn_up.weight", "ffn_down.weight"]
# how far each type may move a N(0, 0.5) weight (F32 stays exact)
TOLERANCE = {Q.F32: 0, Q.F16: 1e-3, Q.BF16: 1e-2, Q.Q8_0: 0.02, Q.Q5_0: 0.1, Q.Q5_1: 0.1,
             Q.Q4_0: 0.2, Q.Q4_1: 0.2}


def gguf_names(cfg: ModelConfig, tie: bool = False) -> list[str]:
    names = [n for n in GLOBAL if not (tie and n == "output.weight")]
    return names + [f"blk.{i}.{n}" for i in range(cfg.num_hidden_layers) for n in LAYER]


# byte offsets of the float16 scales inside one block of each K-quant
K_SCALES = {Q.Q2_K: (80, 82), Q.Q3_K: (108,), Q.Q4_K: (0, 2), Q.Q5_K: (0, 2), Q.Q6_K: (208,)}


def random_blocks(rng: np.random.Generator, qtype: Q, shape: tuple[int, int]) -> np.ndarray:
    """Random K-quant blocks with small finite scales (random bytes would give NaN scales)."""
    block, size = GGML_QUANT_SIZES[qtype]
    data = rng.integers(0, 256, (shape[0], shape[1] // block, size), dtype=np.uint8)
    for at in K_SCALES[qtype]:
        scale = rng.uniform(0.001, 0.01, data.shape[:2]).astype(np.float16)
        data[:, :, at:at + 2] = scale.view(np.uint8).reshape(*data.shape[:2], 2)
    return data.reshape(shape[0], -1)


def write_metadata(w: GGUFWriter, cfg: ModelConfig, extra: dict | None) -> None:
    w.add_block_count(cfg.num_hidden_layers)
    w.add_context_length(cfg.max_position_embeddings)
    w.add_embedding_length(cfg.hidden_size)
    w.add_feed_forward_length(cfg.intermediate_size)
    w.add_head_count(cfg.num_attention_heads)
    w.add_head_count_kv(cfg.num_key_value_heads)
    w.add_rope_freq_base(cfg.rope_theta)
    w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    w.add_tokenizer_model("gpt2")
    w.add_token_list([f"t{i}" for i in range(cfg.vocab_size)])
    w.add_token_types([1] * cfg.vocab_size)
    w.add_token_merges(["t 1", "t1 0"])
    w.add_bos_token_id(cfg.bos_token_id)
    w.add_eos_token_id(cfg.eos_token_ids[0])
    w.add_chat_template("{% for m in messages %}{{ m.content }}{% endfor %}")
    for key, value in (extra or {}).items():  # a str, or (value, GGUFValueType)
        if isinstance(value, tuple):
            w.add_key_value(key, *value)
        else:
            w.add_string(key, value)


def write_gguf(path: Path, cfg: ModelConfig, qtype: Q = Q.F32, *, arch: str = "qwen2",
               tie: bool = False, drop: tuple[str, ...] = (), extra: dict | None = None,
               extra_tensors: dict | None = None, raw_bytes: bool = False,
               seed: int = 0) -> dict[str, np.ndarray]:
    """A qwen2 GGUF for cfg; returns HF name -> the float32 values a reader must produce.

    Norms and biases stay F32 (as llama.cpp writes them); matrices take qtype. raw_bytes
    fills matrices with random blocks (for the K-quants, which gguf-py cannot quantize).
    """
    rng = np.random.default_rng(seed)
    w = GGUFWriter(str(path), arch)
    write_metadata(w, cfg, extra)
    want: dict[str, np.ndarray] = {}
    shapes = expected_shapes(cfg.replace(tie_word_embeddings=tie))
    for name in gguf_names(cfg, tie):
        if name in drop:
            continue
        hf, shape = hf_name(name), shapes[hf_name(name)]
        values = (rng.standard_normal(shape) * 0.5).astype(np.float32)
        if len(shape) == 1 or qtype == Q.F32:
            w.add_tensor(name, values)
            want[hf] = values
            continue
        if raw_bytes:
            data = random_blocks(rng, qtype, shape)
        else:
            data = quantize(values, qtype)
        w.add_tensor(name, data, raw_dtype=qtype)
        want[hf] = dequantize(data, qtype).reshape(shape)
    for name, values in (extra_tensors or {}).items():
        w.add_tensor(name, values)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return want


@pytest.fixture
def tiny_gguf(tmp_path, tiny_config) -> Path:
    path = tmp_path / "tiny.gguf"
    write_gguf(path, tiny_config, Q.Q8_0)
    return path


@pytest.mark.parametrize("qtype", list(TOLERANCE), ids=lambda q: q.name)
def test_tiny_gguf_reads_back_in_hf_names_and_shapes(tmp_path, tiny_config, qtype):
    path = tmp_path / "m.gguf"
    want = write_gguf(path, tiny_config, qtype, seed=3)
    ckpt = open_checkpoint(path)
    assert ckpt.format == "gguf" and ckpt.path == path and ckpt.generation_config == {}
    assert ckpt.config == tiny_config.replace(torch_dtype="bfloat16")
    assert sorted(ckpt.tensor_names()) == sorted(expected_shapes(tiny_config))
    for name, tensor in ckpt.iter_tensors():
        assert tensor.dtype == torch.float32
        assert tuple(tensor.shape) == expected_shapes(tiny_config)[name]
        np.testing.assert_array_equal(tensor.numpy(), want[name])
    original = write_gguf(tmp_path / "f32.gguf", tiny_config, Q.F32, seed=3)
    for name, tensor in ckpt.iter_tensors(dtype=torch.bfloat16, names=["lm_head.weight"]):
        assert tensor.dtype == torch.bfloat16
        diff = (tensor.float() - torch.from_numpy(original[name])).abs().max().item()
        assert diff <= TOLERANCE[qtype] + 0.02  # + bf16 rounding of values up to ~2.5


@pytest.mark.parametrize("qtype", [Q.Q2_K, Q.Q3_K, Q.Q4_K, Q.Q5_K, Q.Q6_K], ids=lambda q: q.name)
def test_k_quants_dequantize_to_hf_shapes(tmp_path, qtype):
    cfg = ModelConfig(vocab_size=16, hidden_size=256, intermediate_size=512, num_hidden_layers=1,
                      num_attention_heads=4, num_key_value_heads=2, bos_token_id=1,
                      eos_token_ids=(2,))
    want = write_gguf(tmp_path / "k.gguf", cfg, qtype, raw_bytes=True)
    ckpt = open_checkpoint(tmp_path / "k.gguf")
    for name, tensor in ckpt.iter_tensors():
        assert tuple(tensor.shape) == expected_shapes(cfg)[name]
        np.testing.assert_array_equal(tensor.numpy(), want[name])
        assert torch.isfinite(tensor).all()
    raw, type_name, shape = ckpt.raw_gguf_tensor("model.layers.0.mlp.down_proj.weight")
    assert type_name == qtype.name and shape == (256, 512) and raw.dtype == np.uint8


def test_tied_embeddings_when_there_is_no_output_tensor(tmp_path, tiny_config):
    write_gguf(tmp_path / "t.gguf", tiny_config, tie=True)
    ckpt = open_checkpoint(tmp_path / "t.gguf")
    assert ckpt.config.tie_word_embeddings
    assert "lm_head.weight" not in ckpt.tensor_names()


def test_metadata_for_the_tokenizer(tiny_gguf, tiny_config):
    meta = open_checkpoint(tiny_gguf).gguf_metadata()
    assert meta["tokenizer.ggml.tokens"][:3] == ["t0", "t1", "t2"]
    assert len(meta["tokenizer.ggml.tokens"]) == tiny_config.vocab_size
    assert meta["tokenizer.ggml.merges"] == ["t 1", "t1 0"]
    assert meta["tokenizer.ggml.token_type"][:2] == [1, 1]
    assert meta["tokenizer.ggml.bos_token_id"] == 1 and meta["tokenizer.ggml.eos_token_id"] == 2
    assert "messages" in meta["tokenizer.chat_template"]


def test_yarn_rope_scaling_from_metadata(tmp_path, tiny_config):
    from gguf import GGUFValueType as V
    write_gguf(tmp_path / "y.gguf", tiny_config, extra={
        "qwen2.rope.scaling.type": "yarn", "qwen2.rope.scaling.factor": (4.0, V.FLOAT32),
        "qwen2.rope.scaling.original_context_length": (512, V.UINT32)})
    cfg = open_checkpoint(tmp_path / "y.gguf").config
    assert cfg.rope_scaling["type"] == "yarn" and cfg.rope_scaling["factor"] == 4.0
    assert cfg.context_length == 2048


def test_raw_tensor_and_name_errors(tiny_gguf):
    ckpt = open_checkpoint(tiny_gguf)
    raw, type_name, shape = ckpt.raw_gguf_tensor("model.layers.1.self_attn.q_proj.weight")
    assert type_name == "Q8_0" and shape == (64, 64) and raw.shape == (64, 64 // 32 * 34)
    norm, type_name, _ = ckpt.raw_gguf_tensor("model.norm.weight")
    assert type_name == "F32" and norm.dtype == np.float32 and norm.shape == (64,)
    with pytest.raises(CheckpointError, match="no tensor"):
        ckpt.raw_gguf_tensor("model.nothing")
    with pytest.raises(CheckpointError, match="no tensors named"):
        list(ckpt.iter_tensors(names=["model.nothing"]))


# ---- corrupt files ------------------------------------------------------------------------

def must_fail(path: Path, match: str) -> CheckpointError:
    """open_checkpoint must raise CheckpointError, fast and without a big allocation."""
    tracemalloc.start()
    start = time.perf_counter()
    try:
        with pytest.raises(CheckpointError, match=match) as info:
            open_checkpoint(path)
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    assert time.perf_counter() - start < 1.0
    assert peak < 32 << 20
    assert str(path) in str(info.value)
    return info.value


def patched(src: Path, dst: Path, at: int, fmt: str, value) -> Path:
    data = bytearray(src.read_bytes())
    struct.pack_into(fmt, data, at, value)
    dst.write_bytes(bytes(data))
    return dst


def after(data: bytes, text: bytes) -> int:
    """Offset just past the first occurrence of a length-prefixed key or name."""
    return data.index(struct.pack("<Q", len(text)) + text) + 8 + len(text)


def tensor_info_at(data: bytes, name: bytes) -> tuple[int, int, int]:
    """(n_dims offset, type offset, data-offset offset) of a tensor's info record."""
    at = after(data, name)
    n_dims = struct.unpack_from("<I", data, at)[0]
    return at, at + 4 + 8 * n_dims, at + 8 + 8 * n_dims


BIG = 1 << 63


@pytest.mark.parametrize("where,fmt,value,match", [
    (0, "<4s", b"GGUX", "not a GGUF file"),
    (4, "<I", 1, "version 1"),
    (4, "<I", 0x03000000, "version"),
    (8, "<Q", BIG, "tensor_count"),
    (16, "<Q", BIG, "kv_count"),
    (16, "<Q", 5000, "truncated|absurd"),
    (24, "<Q", BIG, "length of metadata key"),
])
def test_absurd_header_fields(tiny_gguf, tmp_path, where, fmt, value, match):
    must_fail(patched(tiny_gguf, tmp_path / "bad.gguf", where, fmt, value), match)


def test_absurd_array_and_string_lengths(tiny_gguf, tmp_path):
    data = tiny_gguf.read_bytes()
    tokens = after(data, b"tokenizer.ggml.tokens")  # then: type u32, item type u32, count u64
    must_fail(patched(tiny_gguf, tmp_path / "a.gguf", tokens + 8, "<Q", BIG), "array length")
    must_fail(patched(tiny_gguf, tmp_path / "b.gguf", tokens + 16, "<Q", BIG), "length of")
    must_fail(patched(tiny_gguf, tmp_path / "c.gguf", tokens + 4, "<I", 99), "item type 99")
    must_fail(patched(tiny_gguf, tmp_path / "d.gguf", tokens, "<I", 77), "value type 77")
    name = after(data, b"token_embd.weight") - len(b"token_embd.weight") - 8
    must_fail(patched(tiny_gguf, tmp_path / "e.gguf", name, "<Q", BIG), "tensor name")


def test_nested_arrays_are_bounded():
    from qwq.weights.gguf_file import parse_gguf_header
    key = b"k"
    nested = struct.pack("<I", 9) + struct.pack("<IQ", 9, 1) * 8 + struct.pack("<IQ", 4, 0)
    buf = b"GGUF" + struct.pack("<IQQ", 3, 0, 1) + struct.pack("<Q", 1) + key + nested
    with pytest.raises(CheckpointError, match="deeper"):
        parse_gguf_header(buf)


@pytest.mark.parametrize("field,value,match", [
    ("n_dims", 5, "dimensions"), ("dim", 0, "absurd dims"), ("dim", BIG, "absurd dims|past"),
    ("type", 99, "unknown type 99"), ("type", int(Q.IQ2_XXS), "IQ2_XXS"),
    ("offset", 1 << 40, "past the end"), ("offset", 7, "not aligned"),
])
def test_bad_tensor_info(tiny_gguf, tmp_path, field, value, match):
    n_dims_at, type_at, offset_at = tensor_info_at(tiny_gguf.read_bytes(), b"output_norm.weight")
    at, fmt = {"n_dims": (n_dims_at, "<I"), "dim": (n_dims_at + 4, "<Q"),
               "type": (type_at, "<I"), "offset": (offset_at, "<Q")}[field]
    err = must_fail(patched(tiny_gguf, tmp_path / "bad.gguf", at, fmt, value), match)
    assert "output_norm.weight" in str(err)


def test_overlapping_tensor_data(tiny_gguf, tmp_path):
    data = tiny_gguf.read_bytes()
    first = struct.unpack_from("<Q", data, tensor_info_at(data, b"token_embd.weight")[2])[0]
    at = tensor_info_at(data, b"output_norm.weight")[2]
    must_fail(patched(tiny_gguf, tmp_path / "o.gguf", at, "<Q", first), "overlaps")


def test_truncated_anywhere(tiny_gguf, tmp_path):
    data = tiny_gguf.read_bytes()
    header_end = tensor_info_at(data, b"blk.1.ffn_down.weight")[2] + 8
    for cut in (0, 3, 10, 23, 30, 200, 5000, header_end - 1, header_end + 40, len(data) - 1):
        bad = tmp_path / f"cut{cut}.gguf"
        bad.write_bytes(data[:cut])
        must_fail(bad, "truncated|past the end|too short")


def test_wrong_architecture(tmp_path, tiny_config):
    write_gguf(tmp_path / "l.gguf", tiny_config, arch="llama")
    err = must_fail(tmp_path / "l.gguf", "'llama'")
    assert "qwen2" in str(err)


def test_missing_tensor_is_named(tmp_path, tiny_config):
    write_gguf(tmp_path / "m.gguf", tiny_config, drop=("blk.1.ffn_down.weight",))
    must_fail(tmp_path / "m.gguf", r"model\.layers\.1\.mlp\.down_proj\.weight")


def test_metadata_that_contradicts_the_tensors(tmp_path, tiny_config):
    path = tmp_path / "s.gguf"
    write_gguf(path, tiny_config)
    at = after(path.read_bytes(), b"qwen2.embedding_length") + 4
    must_fail(patched(path, tmp_path / "s2.gguf", at, "<I", 32), "shape")
    must_fail(patched(path, tmp_path / "s3.gguf", at, "<I", 0), "embedding_length")
    at = after(path.read_bytes(), b"qwen2.block_count") + 4
    must_fail(patched(path, tmp_path / "s4.gguf", at, "<I", 1 << 24), "layers.2.")


def test_unused_tensors_are_ignored(tmp_path, tiny_config):
    # rope_freqs appears in some llama-family files; qwen2 has no use for it
    path = tmp_path / "x.gguf"
    write_gguf(path, tiny_config, extra_tensors={"rope_freqs.weight": np.ones(8, np.float32)})
    assert sorted(open_checkpoint(path).tensor_names()) == sorted(expected_shapes(tiny_config))


def test_metadata_arrays_share_one_item_budget(tiny_gguf, monkeypatch):
    from qwq.weights import gguf_file
    monkeypatch.setattr(gguf_file, "MAX_ARRAY_ITEMS", 100)  # the vocab alone has 320
    must_fail(tiny_gguf, "array length of metadata key 'tokenizer.ggml.tokens'")


def test_layers_beyond_block_count_are_refused(tmp_path, tiny_config):
    path = tmp_path / "x.gguf"
    write_gguf(path, tiny_config, extra_tensors={"blk.7.attn_norm.weight": np.ones(64, "f4")})
    must_fail(path, r"model\.layers\.7\.input_layernorm\.weight.*2-layer")


# ---- the demo model ----------------------------------------------------------------------

def test_demo_gguf_config_and_tensors(demo_gguf):
    ckpt = open_checkpoint(demo_gguf)
    assert ckpt.config == PRESETS["qwq-demo"]
    shapes = expected_shapes(ckpt.config)
    assert sorted(ckpt.tensor_names()) == sorted(shapes)
    types = {}
    picks = [f"model.layers.0.{n}" for n in (
        "self_attn.q_proj.weight", "self_attn.v_proj.weight", "mlp.down_proj.weight",
        "self_attn.q_proj.bias", "input_layernorm.weight")] + ["model.norm.weight"]
    for name, tensor in ckpt.iter_tensors(dtype=torch.bfloat16, names=picks):
        types[ckpt.raw_gguf_tensor(name)[1]] = name
        assert tuple(tensor.shape) == shapes[name] and tensor.dtype == torch.bfloat16
        assert torch.isfinite(tensor).all() and tensor.float().abs().max() < 1e3
    assert {"Q5_0", "Q8_0", "F32"} <= set(types)
    meta = ckpt.gguf_metadata()
    assert len(meta["tokenizer.ggml.tokens"]) == 151936
    assert meta["tokenizer.ggml.tokens"][151645] == "<|im_end|>"


@pytest.mark.slow
def test_demo_tensors_match_transformers_gguf_loader(demo_gguf):
    transformers = pytest.importorskip("transformers")
    from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint

    meta = load_gguf_checkpoint(str(demo_gguf))["config"]
    hf_cfg = transformers.Qwen2Config(**{k: v for k, v in meta.items()
                                         if k not in ("model_type", "_model_name_or_path")})
    with torch.device("meta"):
        skeleton = transformers.Qwen2ForCausalLM(hf_cfg)
    ref = load_gguf_checkpoint(str(demo_gguf), return_tensors=True, model_to_load=skeleton)
    ref = ref["tensors"]
    ckpt = open_checkpoint(demo_gguf)
    assert set(ref) == set(ckpt.tensor_names())
    for name, tensor in ckpt.iter_tensors():
        assert torch.equal(tensor, torch.as_tensor(ref.pop(name)).float()), name
