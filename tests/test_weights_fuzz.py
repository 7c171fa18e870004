"""Fuzzing the header validators: random bytes and mutations of valid files may only ever
parse or raise CheckpointError (no other exception, no hang, no huge allocation)."""

from __future__ import annotations

import functools
import struct
import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch
from gguf import GGMLQuantizationType as Q
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import save
from test_weights_gguf import write_gguf

from qwq.config import ModelConfig
from qwq.errors import CheckpointError
from qwq.weights import expected_shapes, open_checkpoint
from qwq.weights.gguf_file import parse_gguf_header
from qwq.weights.safetensors_dir import parse_safetensors_header

FUZZ = settings(max_examples=200, deadline=1000, database=None,
                suppress_health_check=[HealthCheck.too_slow])
SMALL = ModelConfig(vocab_size=32, hidden_size=32, intermediate_size=32, num_hidden_layers=1,
                    num_attention_heads=2, num_key_value_heads=1, bos_token_id=1,
                    eos_token_ids=(2,))
EDGES = [0, 1, 2, 3, 4, 9, 255, 2**31 - 1, 2**31, 2**32 - 1, 2**32, 2**63 - 1, 2**63, 2**64 - 1]


@functools.cache
def valid_gguf() -> bytes:
    path = Path(tempfile.mkdtemp()) / "small.gguf"
    write_gguf(path, SMALL, Q.Q8_0)
    return path.read_bytes()


@functools.cache
def valid_safetensors() -> bytes:
    gen = torch.Generator().manual_seed(0)
    return save({n: torch.randn(s, generator=gen).to(torch.bfloat16)
                 for n, s in list(expected_shapes(SMALL).items())[:6]})


def header_length(data: bytes, kind: str) -> int:
    if kind == "gguf":
        return parse_gguf_header(data).data_start
    return 8 + struct.unpack_from("<Q", data)[0]


@st.composite
def mutated(draw, kind: str, anywhere: bool = False) -> bytes:
    """A valid file with a few bytes overwritten (or edge-case integers written in), then
    perhaps truncated. Unless anywhere, the damage lands in the header, where validators read."""
    data = bytearray(valid_gguf() if kind == "gguf" else valid_safetensors())
    limit = len(data) if anywhere else header_length(bytes(data), kind)
    for _ in range(draw(st.integers(1, 4))):
        at = draw(st.integers(0, limit - 1))
        if draw(st.booleans()):
            patch = draw(st.binary(min_size=1, max_size=8))
        else:
            fmt = draw(st.sampled_from(["<Q", "<I"]))
            value = draw(st.sampled_from(EDGES)) % (1 << (8 * struct.calcsize(fmt)))
            patch = struct.pack(fmt, value)
        data[at:at + len(patch)] = patch
    if draw(st.booleans()):
        data = data[:draw(st.integers(0, len(data)))]
    return bytes(data)


def only_checkpoint_errors(fn, *args) -> None:
    try:
        fn(*args)
    except CheckpointError:
        pass


@FUZZ
@given(st.one_of(st.binary(max_size=1024),
                 st.binary(max_size=1024).map(lambda b: b"GGUF" + struct.pack("<I", 3) + b)))
def test_gguf_header_random_bytes(buf):
    only_checkpoint_errors(parse_gguf_header, buf)


@FUZZ
@given(mutated("gguf"))
def test_gguf_header_mutations(buf):
    only_checkpoint_errors(parse_gguf_header, buf)


@settings(FUZZ, max_examples=100)
@given(st.one_of(mutated("gguf"), mutated("gguf", anywhere=True)))
def test_gguf_open_and_read_mutated_files(buf):
    """The whole path: validate, build the config, dequantize every tensor."""
    with tempfile.TemporaryDirectory() as d, warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # NaN scales in mangled blocks
        path = Path(d) / "m.gguf"
        path.write_bytes(buf)
        try:
            ckpt = open_checkpoint(path)
            for _, tensor in ckpt.iter_tensors():
                assert isinstance(tensor, torch.Tensor)
            ckpt.gguf_metadata()
        except CheckpointError:
            pass


@FUZZ
@given(st.one_of(st.binary(max_size=1024),
                 st.binary(max_size=512).map(lambda b: struct.pack("<Q", len(b)) + b)))
def test_safetensors_header_random_bytes(buf):
    only_checkpoint_errors(parse_safetensors_header, buf, len(buf))


@FUZZ
@given(mutated("safetensors"))
def test_safetensors_header_mutations(buf):
    only_checkpoint_errors(parse_safetensors_header, buf, len(buf))


@settings(FUZZ, max_examples=100)
@given(st.dictionaries(st.text(max_size=8), st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner,
                                                                max_size=3), max_leaves=12),
    max_size=6))
def test_safetensors_header_random_json(header):
    """Well-formed JSON of the wrong shape reaches the per-entry checks."""
    import json
    raw = json.dumps(header).encode()
    buf = struct.pack("<Q", len(raw)) + raw + bytes(64)
    only_checkpoint_errors(parse_safetensors_header, buf, len(buf))


def test_valid_files_still_parse():
    """The fuzz seeds themselves are valid, so mutations start from a real file."""
    assert len(parse_gguf_header(valid_gguf()).tensors) == 15
    entries = parse_safetensors_header(valid_safetensors(), len(valid_safetensors()))
    assert len(entries) == 6 and all(e[0] == "BF16" for e in entries.values())
    assert np.prod(entries["model.embed_tokens.weight"][1]) == 32 * 32
