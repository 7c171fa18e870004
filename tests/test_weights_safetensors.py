"""Hugging Face directories: single and sharded safetensors, what transformers makes of the
directories we write, refusals (pickle, remote code), corrupt shards, and hub ids offline."""

from __future__ import annotations

import json
import struct
import time
from pathlib import Path

import pytest
import torch

from qwq.errors import CheckpointError, UnsafeCheckpointError
from qwq.weights import expected_shapes, open_checkpoint, save_safetensors_dir
from qwq.weights.safetensors_dir import parse_safetensors_header


def random_state(cfg) -> dict[str, torch.Tensor]:
    return {n: torch.randn(s) for n, s in expected_shapes(cfg).items()}


@pytest.fixture
def state(tiny_config):
    return random_state(tiny_config)


@pytest.fixture
def hf_dir(tmp_path, tiny_config, state) -> Path:
    return save_safetensors_dir(state, tiny_config, tmp_path / "m", torch.float32)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_single_file_round_trip_keeps_dtype(tmp_path, tiny_config, state, dtype):
    d = save_safetensors_dir(state, tiny_config, tmp_path / "m", dtype)
    assert sorted(p.name for p in d.iterdir()) == ["config.json", "model.safetensors"]
    ckpt = open_checkpoint(d)
    assert ckpt.format == "safetensors" and ckpt.generation_config == {}
    assert ckpt.config == tiny_config.replace(torch_dtype=str(dtype)[6:])
    assert sorted(ckpt.tensor_names()) == sorted(state)
    for name, tensor in ckpt.iter_tensors():
        assert tensor.dtype == dtype and torch.equal(tensor, state[name].to(dtype))
    (name, tensor), = ckpt.iter_tensors(dtype=torch.float32, names=["model.norm.weight"])
    assert tensor.dtype == torch.float32


def test_a_float_directory_answers_with_the_backend_defaults(hf_dir):
    """What only GGUF and AWQ store has one declared default on every backend (Backend): no
    types, no metadata, no codes or grids, and blocks refused with the format named."""
    from qwq.weights.checkpoint import Backend
    ckpt = open_checkpoint(hf_dir)
    assert isinstance(ckpt._backend, Backend) and ckpt._backend.format == ckpt.format
    name = "model.layers.0.mlp.down_proj.weight"
    assert ckpt.gguf_types() == {} and ckpt.weight_types() == {} and ckpt.gguf_metadata() == {}
    assert ckpt.group_codes(name) is None
    assert [n for n, _ in ckpt.iter_tensors(names=[name], block_scales=True)] == [name]
    with pytest.raises(CheckpointError, match="need a GGUF file; this is a safetensors"):
        ckpt.stored(name)
    with pytest.raises(CheckpointError, match="raw_gguf_tensor needs a GGUF"):
        ckpt.raw_gguf_tensor(name)


def test_sharded_round_trip(tmp_path, tiny_config, state):
    d = save_safetensors_dir(state, tiny_config, tmp_path / "m", torch.bfloat16,
                             shard_size_bytes=20_000)
    shards = sorted(p.name for p in d.glob("*.safetensors"))
    assert len(shards) > 2 and shards[0] == f"model-00001-of-{len(shards):05d}.safetensors"
    index = json.loads((d / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"]) == set(state)
    ckpt = open_checkpoint(d)
    got = dict(ckpt.iter_tensors())
    assert all(torch.equal(got[n], state[n].bfloat16()) for n in state)


def test_tied_model_writes_no_lm_head(tmp_path, tiny_config, state):
    cfg = tiny_config.replace(tie_word_embeddings=True)
    ckpt = open_checkpoint(save_safetensors_dir(state, cfg, tmp_path / "t", torch.float32))
    assert ckpt.config.tie_word_embeddings and "lm_head.weight" not in ckpt.tensor_names()


def test_transformers_loads_what_we_write(hf_dir, state):
    transformers = pytest.importorskip("transformers")
    model = transformers.Qwen2ForCausalLM.from_pretrained(hf_dir, dtype=torch.float32)
    ours = model.state_dict()
    assert all(torch.equal(ours[n], t) for n, t in state.items())


def test_generation_config_is_read(hf_dir):
    (hf_dir / "generation_config.json").write_text('{"temperature": 0.7, "top_p": 0.8}')
    assert open_checkpoint(hf_dir).generation_config == {"temperature": 0.7, "top_p": 0.8}


def test_a_checkpoint_saves_to_a_directory(tmp_path, hf_dir, tiny_config):
    ckpt = open_checkpoint(hf_dir)
    again = open_checkpoint(save_safetensors_dir(ckpt, tiny_config, tmp_path / "b", torch.float32))
    for (n1, t1), (n2, t2) in zip(ckpt.iter_tensors(), again.iter_tensors()):
        assert n1 == n2 and torch.equal(t1, t2)


# ---- refusals and corrupt directories ---------------------------------------------------

def test_missing_directory_names_the_path(tmp_path):
    with pytest.raises(CheckpointError, match=str(tmp_path / "nope")):
        open_checkpoint(tmp_path / "nope")


def test_remote_code_is_refused(hf_dir):
    cfg = json.loads((hf_dir / "config.json").read_text())
    cfg["auto_map"] = {"AutoModelForCausalLM": "modeling_evil.Evil"}
    (hf_dir / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(UnsafeCheckpointError, match="remote code"):
        open_checkpoint(hf_dir)


def test_pickle_only_directory_is_refused(hf_dir):
    (hf_dir / "model.safetensors").unlink()
    (hf_dir / "pytorch_model.bin").write_bytes(b"\x80\x04not really a pickle")
    with pytest.raises(UnsafeCheckpointError, match="pickle.*safetensors"):
        open_checkpoint(hf_dir)


def test_unsupported_architecture_says_what_is_supported(hf_dir):
    cfg = json.loads((hf_dir / "config.json").read_text())
    cfg.update(architectures=["LlamaForCausalLM"], model_type="llama")
    (hf_dir / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="Qwen2ForCausalLM"):
        open_checkpoint(hf_dir)


@pytest.mark.parametrize("change", [{"num_attention_heads": 0}, {"hidden_size": "big"},
                                    {"rope_scaling": [1]}, {"num_hidden_layers": 1 << 23}])
def test_bad_config_values(hf_dir, change):
    cfg = json.loads((hf_dir / "config.json").read_text())
    cfg.update(change)
    (hf_dir / "config.json").write_text(json.dumps(cfg))
    start = time.perf_counter()
    with pytest.raises(CheckpointError):
        open_checkpoint(hf_dir)
    assert time.perf_counter() - start < 1.0


def test_missing_tensors_are_listed(tmp_path, tiny_config, state):
    del state["model.layers.1.mlp.up_proj.weight"]
    d = save_safetensors_dir(state, tiny_config, tmp_path / "m", torch.float32)
    with pytest.raises(CheckpointError, match=r"model\.layers\.1\.mlp\.up_proj\.weight"):
        open_checkpoint(d)


def test_wrong_shape_is_named(tmp_path, tiny_config, state):
    state["model.norm.weight"] = torch.ones(63)
    d = save_safetensors_dir(state, tiny_config, tmp_path / "m", torch.float32)
    with pytest.raises(CheckpointError, match=r"model\.norm\.weight.*\(63,\)"):
        open_checkpoint(d)


def test_missing_shard_is_named(tmp_path, tiny_config, state):
    d = save_safetensors_dir(state, tiny_config, tmp_path / "m", torch.float32,
                             shard_size_bytes=50_000)
    second = next(d.glob("model-00002-of-*.safetensors"))
    second.unlink()
    with pytest.raises(CheckpointError, match=second.name):
        open_checkpoint(d)


def test_index_cannot_point_outside_the_directory(tmp_path, tiny_config, state):
    d = save_safetensors_dir(state, tiny_config, tmp_path / "m", torch.float32,
                             shard_size_bytes=50_000)
    index = json.loads((d / "model.safetensors.index.json").read_text())
    index["weight_map"]["model.norm.weight"] = "../elsewhere.safetensors"
    (d / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(CheckpointError, match="bad shard name"):
        open_checkpoint(d)


@pytest.mark.parametrize("cut", [0, 5, 8, 100, -100, -1])
def test_truncated_shard_fails_at_open(hf_dir, cut):
    shard = hf_dir / "model.safetensors"
    data = shard.read_bytes()
    shard.write_bytes(data[:cut])
    with pytest.raises(CheckpointError, match="model.safetensors.*truncated"):
        open_checkpoint(hf_dir)


def header_bytes(header: dict, data: bytes = b"") -> bytes:
    raw = json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw + data


@pytest.mark.parametrize("buf,match", [
    (struct.pack("<Q", 1 << 63) + b"{}", "header length"),
    (struct.pack("<Q", 50) + b"{}", "truncated"),
    (struct.pack("<Q", 2) + b"[]", "not a JSON object"),
    (struct.pack("<Q", 3) + b"{\xff}", "not valid JSON"),
    (header_bytes({"a": {"dtype": "I64", "shape": [1], "data_offsets": [0, 8]}}, bytes(8)),
     "dtype"),
    (header_bytes({"a": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}}, bytes(8)),
     "needs 12"),
    (header_bytes({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
                   "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}}, bytes(12)),
     "overlapping"),
    (header_bytes({"a": {"dtype": "F32", "shape": [1 << 38], "data_offsets": [0, 1 << 40]}}),
     "truncated"),
    (header_bytes({"a": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 4]}}, bytes(4)),
     "bad shape"),
    (header_bytes({"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}, bytes(9)),
     "stray bytes"),
    (header_bytes({"__metadata__": {"k": 1}}), "__metadata__"),
    (struct.pack("<Q", 13) + b'{"a":1,"a":2}', "duplicate"),
])
def test_bad_headers(buf, match):
    with pytest.raises(CheckpointError, match=match):
        parse_safetensors_header(buf, len(buf))


def test_progress_bar_can_be_silenced(monkeypatch):
    from qwq.weights.checkpoint import _progress
    monkeypatch.setenv("QWQ_NO_PROGRESS", "1")
    assert _progress(["a"], "x") == ["a"]


# ---- hub ids ---------------------------------------------------------------------------

def test_hub_id_offline_says_how_to_get_the_model(tmp_path, monkeypatch):
    from qwq.weights.hub import resolve_hub_id
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.perf_counter()
    with pytest.raises(CheckpointError) as info:
        resolve_hub_id("Qwen/QwQ-32B-Preview", cache_dir=tmp_path)
    assert time.perf_counter() - start < 10
    msg = str(info.value)
    assert "could not be reached" in msg and "network" in msg and "HF_HUB_CACHE" in msg


def test_hub_id_without_network_fails_fast(tmp_path, monkeypatch):
    from qwq.weights.hub import resolve_hub_id
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "QWQ_OFFLINE"):
        monkeypatch.delenv(var, raising=False)
    start = time.perf_counter()
    with pytest.raises(CheckpointError, match="qwq-tests/no-such-model"):
        resolve_hub_id("qwq-tests/no-such-model", cache_dir=tmp_path, etag_timeout=3)
    assert time.perf_counter() - start < 10


def test_hub_id_must_look_like_one():
    from qwq.weights.hub import resolve_hub_id
    with pytest.raises(CheckpointError, match="not a hub id"):
        resolve_hub_id("../../etc/passwd")
