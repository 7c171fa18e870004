"""GGUF tensors computed in their own block formats (qwq/kernels/ggml.py and ggml.cpp).

The torch dequantization is held to the gguf package's (an independent reference), the kernels
to the same product written in torch (`ggml.linear_reference`), on random valid blocks and on the
demo GGUF's own tensors read in place from the file; outputs are checked for batch invariance and
the kernels for never reading past a tensor's last byte."""

import gc
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import gguf
import pytest
import torch

from qwq.kernels import ggml, kernel_isa, kernels_available

X16 = ggml.INTERLEAVED["Q5_0"]  # rows interleaved in groups of 16: tested on their own below
TYPES = [t for t in ggml.TYPES.values() if t is not X16]
# qwq's load-time layouts, not a file's
LAYOUTS = [t.name for t in (*ggml.LAYOUTS.values(), *ggml.INTERLEAVED.values())]
FILE_TYPES = [t for t in TYPES if t.name not in LAYOUTS]
K_QUANTS = [t for t in TYPES if t.block == 256]
has_isa = kernel_isa() is not None  # AVX-512 VNNI, or AVX2 with FMA and F16C
kernel = pytest.mark.skipif(not has_isa, reason="the CPU runs neither kernel build")


@pytest.fixture(autouse=True, scope="module")
def _built():
    # a CPU with the instructions must get the kernels (and torch.ops.qwq.ggml_linear loaded)
    assert kernels_available() or not has_isa


def _ids(t):
    return t.name


def _blocks(t, rows, cols, seed=0):
    return ggml.random_blocks(t, rows, cols, torch.Generator().manual_seed(seed))


def _assert_matches_reference(got, x, raw, t, bias):
    """Within float32 summation error of the reference: 1e-5 of the sum of |terms|."""
    want = ggml.linear_reference(x.float(), raw, t, None if bias is None else bias.float(),
                                 raw.shape[0])
    q, d = ggml.quantize_activations(x, t)
    xq = (q.view(x.shape[0], -1, t.activation_block) * d[..., None]).view(x.shape)
    bound = 1e-5 * (xq.abs() @ ggml.dequantize(raw, t).abs().T) + 1e-6
    if x.dtype != torch.float32:  # both round to the 16-bit output
        bound += want.abs() * 2 ** -7
    assert got.dtype == x.dtype and got.shape == want.shape
    assert ((got.float() - want).abs() <= bound).all()


@pytest.mark.parametrize("t", FILE_TYPES, ids=_ids)
def test_dequantize_matches_gguf(t):
    raw = _blocks(t, 9, 2 * 256)
    want = gguf.quants.dequantize(raw.numpy(), gguf.GGMLQuantizationType[t.name])
    assert torch.equal(ggml.dequantize(raw, t), torch.from_numpy(want.copy()))


@pytest.mark.parametrize("name", list(ggml.LAYOUTS))
@pytest.mark.parametrize("cols", [128, 896, 3584])
def test_q5_0_and_q8_0_are_rearranged_into_the_same_values_and_products(name, cols):
    """Where the kernels run, Q5_0 and Q8_0 rows of whole chunks compute as Q5_0x4 / Q8_0x4:
    the same bytes rearranged (the kernel's shuffle is the torch permutation), the same values,
    and products bit for bit the kernel's on the file's own layout."""
    raw = _blocks(ggml.TYPES[name], 33, cols)
    got, t = ggml.computed(raw, name)
    if not kernels_available():
        assert got is raw and t.name == name
        return
    assert t is ggml.LAYOUTS[name] and got.shape == raw.shape
    assert got.data_ptr() != raw.data_ptr()
    chunk = 4 * ggml.TYPES[name].block_bytes
    assert torch.equal(got.view(-1, chunk), raw.reshape(-1, chunk)[:, ggml._ORDERS[name]])
    assert torch.equal(ggml.dequantize(got, t), ggml.dequantize(raw, name))
    for m in (1, 5, 17):
        x = torch.randn(m, cols, dtype=torch.bfloat16)
        assert torch.equal(ggml.linear(x, got, t, None, 33), ggml.linear(x, raw, name, None, 33))


def _mapping_of(address: int) -> str | None:
    """The /proc/self/smaps entry of the mapping that holds address, or None."""
    for entry in re.split(r"\n(?=[0-9a-f]+-[0-9a-f]+ )", Path("/proc/self/smaps").read_text()):
        lo, hi = (int(a, 16) for a in entry.split(None, 1)[0].split("-"))
        if lo <= address < hi:
            return entry
    return None


@kernel
@pytest.mark.skipif(not Path("/proc/self/smaps").exists(), reason="needs Linux's /proc")
def test_a_large_rearranged_tensor_sits_in_its_own_huge_page_mapping_freed_with_it():
    """A rearranged weight of 2 MB and more gets its own 2 MB-aligned mapping, advised for
    transparent huge pages, with the same bytes as a small one; the mapping goes with the
    tensor."""
    raw = _blocks(ggml.TYPES["Q8_0"], 611, 3584)  # 2.3 MB, not a whole number of pages
    got, t = ggml.computed(raw, "Q8_0")
    chunk = 4 * ggml.TYPES["Q8_0"].block_bytes
    assert torch.equal(got.view(-1, chunk), raw.reshape(-1, chunk)[:, ggml._ORDERS["Q8_0"]])
    address = got.data_ptr()
    assert address % (2 << 20) == 0
    smaps = _mapping_of(address)
    assert smaps is not None
    thp = Path("/sys/kernel/mm/transparent_hugepage/enabled")
    if thp.exists() and "[never]" not in thp.read_text():
        assert re.search(r"^THPeligible:\s+1", smaps, re.MULTILINE), smaps
    x = torch.randn(3, 3584, dtype=torch.bfloat16)
    assert torch.equal(ggml.linear(x, got, t, None, 611), ggml.linear(x, raw, "Q8_0", None, 611))
    del got
    gc.collect()
    assert _mapping_of(address) is None


@kernel
def test_only_q5_0_and_q8_0_of_whole_chunks_are_rearranged():
    for name, cols in (("Q5_0", 96), ("Q8_0", 160), ("Q4_0", 256), ("Q4_K", 256)):
        raw = _blocks(ggml.TYPES[name], 3, cols)
        got, t = ggml.computed(raw, name)
        assert got is raw and t.name == name


@pytest.mark.parametrize("cols", [32, 896, 4864])
def test_q5_0_of_whole_groups_of_16_rows_is_interleaved_into_the_same_values(cols):
    """Where the kernels run, Q5_0 of 16k rows computes as Q5_0x16 (the kernel's interleave is
    the torch one, which _deinterleave_q5_0 undoes), with the file's values; other row counts
    keep Q5_0x4 (the test above)."""
    raw = _blocks(ggml.TYPES["Q5_0"], 48, cols)
    torch_x16 = ggml._interleave_q5_0(raw)
    assert torch_x16.shape == raw.shape and torch.equal(ggml._deinterleave_q5_0(torch_x16), raw)
    assert torch.equal(ggml.dequantize(torch_x16, X16), ggml.dequantize(raw, "Q5_0"))
    got, t = ggml.computed(raw, "Q5_0")
    if not kernels_available():
        assert got is raw and t.name == "Q5_0"
        return
    assert t is X16 and torch.equal(got, torch_x16)


@kernel
@pytest.mark.parametrize("m", [1, 2, 3, 8, 9, 16, 17, 64])
@pytest.mark.parametrize("k", [32, 416, 896])
def test_interleaved_kernel_matches_reference(m, k):
    torch.manual_seed(m)
    raw = _blocks(X16, 48, k, seed=m)
    x = torch.randn(m, k)
    bias = torch.randn(48)
    _assert_matches_reference(torch.ops.qwq.ggml_linear(x, raw, X16.id, bias, 48), x, raw, X16,
                              bias)
    for dtype in (torch.bfloat16, torch.float16):
        _assert_matches_reference(
            torch.ops.qwq.ggml_linear(x.to(dtype), raw, X16.id, bias.to(dtype), 48),
            x.to(dtype), raw, X16, bias.to(dtype))


def _assert_batch_and_thread_invariant(x: torch.Tensor, raw: torch.Tensor,
                                       type_id: int) -> torch.Tensor:
    """Each token of x times raw has the same bits alone, in slices of the batch and at one
    thread as in the whole batch at the default threads; returns the whole batch's output."""
    rows = raw.shape[0]
    full = torch.ops.qwq.ggml_linear(x, raw, type_id, None, rows)
    for lo, hi in [(0, 1), (5, 6), (3, 7), (10, 27), (40, 70)]:
        assert torch.equal(torch.ops.qwq.ggml_linear(x[lo:hi], raw, type_id, None, rows),
                           full[lo:hi])
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert torch.equal(torch.ops.qwq.ggml_linear(x, raw, type_id, None, rows), full)
    finally:
        torch.set_num_threads(threads)
    return full


@kernel
def test_interleaved_kernel_is_batch_invariant():
    """A token's output has the same bits alone, in any batch and at any thread count; so does
    a row's, whether its group is computed alone or among a tensor's other groups."""
    raw = _blocks(X16, 64, 512)
    x = torch.randn(70, 512, dtype=torch.bfloat16) * 3
    full = _assert_batch_and_thread_invariant(x, raw, X16.id)
    alone = torch.ops.qwq.ggml_linear(x, raw[16:32].contiguous(), X16.id, None, 16)
    assert torch.equal(alone, full[:, 16:32])


@kernel
def test_interleaved_rows_are_refused_where_they_cannot_be_read():
    raw = _blocks(X16, 32, 256)
    with pytest.raises(RuntimeError, match="Q5_0x16 weights must be contiguous .* rows a "
                                           "multiple of 16"):
        torch.ops.qwq.ggml_linear(torch.randn(2, 256), raw[:24], X16.id, None, 24)
    with pytest.raises(RuntimeError, match="rows a multiple of 16"):
        torch.ops.qwq.ggml_interleave_q5_0(_blocks(ggml.TYPES["Q5_0"], 24, 256))
    with pytest.raises(ValueError, match="Q5_0x16 holds rows in groups of 16; got 24 rows"):
        ggml.random_blocks(X16, 24, 256)
    with pytest.raises(ValueError, match="Q5_0x16 interleaves its rows"):
        ggml.rows(raw, X16, torch.tensor([1]))


@kernel
def test_shuffle_refuses_partial_chunks_and_orders_that_are_no_permutation():
    with pytest.raises(RuntimeError, match="whole chunks of 88 bytes"):
        torch.ops.qwq.ggml_shuffle_chunks(_blocks(ggml.TYPES["Q5_0"], 2, 96), list(range(88)))
    with pytest.raises(RuntimeError, match="each of the chunk's 88 bytes once"):
        torch.ops.qwq.ggml_shuffle_chunks(_blocks(ggml.TYPES["Q5_0"], 2, 128), [0] * 88)


@pytest.mark.parametrize("t", FILE_TYPES, ids=_ids)
def test_rows_dequantize_only_the_looked_up_rows(t):
    """The table lookup (C++ where the kernels run) gives the torch decode's floats, then
    Tensor.to's rounding."""
    raw = _blocks(t, 50, 512, seed=t.id)
    ids = torch.tensor([[3, 49], [0, 3]])
    want = ggml.dequantize(raw, t)[ids]
    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        got = ggml.rows(raw, t, ids, dtype)
        assert got.shape == (2, 2, 512) and got.dtype == dtype
        assert torch.equal(got, want.to(dtype))
    many = torch.randint(0, 50, (3, 37), generator=torch.Generator().manual_seed(1))
    # a prefill's lookup, split over threads
    assert torch.equal(ggml.rows(raw, t, many, torch.bfloat16),
                       ggml.dequantize(raw, t)[many].bfloat16())
    if kernels_available():
        with pytest.raises(RuntimeError, match="outside the table's 50 rows"):
            ggml.rows(raw, t, torch.tensor([50]))
        with pytest.raises(RuntimeError, match="whole blocks"):
            torch.ops.qwq.ggml_rows(raw[:, 1:].contiguous(), t.id, torch.tensor([0]),
                                    torch.float32)


def test_q8_k_activations_follow_llama_cpp():
    """Q8_K scales by -127 / the first value of largest magnitude (sign included), so that value
    becomes -127; an all-zero block has scale 0."""
    x = torch.zeros(1, 512)
    x[0, 5], x[0, 9], x[0, 10] = -2.0, 2.0, 0.5
    q, d = ggml.quantize_activations(x, "Q4_K")
    assert q[0, 5] == -127 and q[0, 9] == 127 and q[0, 10] == 32
    assert d[0, 0] == 1 / torch.tensor(63.5) and d[0, 1] == 0 and (q[0, 256:] == 0).all()


def test_q8_0_activations_round_half_to_even_with_an_fp16_scale():
    x = torch.tensor([[127.0, 0.5, 1.5, -2.5] + [0.0] * 28])
    q, d = ggml.quantize_activations(x, "Q4_0")
    assert q[0, :4].tolist() == [127, 0, 2, -2] and d.item() == 1.0


@kernel
@pytest.mark.parametrize("t", TYPES, ids=_ids)
@pytest.mark.parametrize("m", [1, 2, 3, 4, 8, 16, 17, 64])
def test_kernel_matches_reference(t, m):
    # 32-blocks: 3 chunks of 128 and a short one of 32 (Q5_0x4 holds only whole chunks)
    k = 768 if t in K_QUANTS else 512 if t.block == 128 else 416
    torch.manual_seed(m)
    raw = _blocks(t, 37, k, seed=m)
    x = torch.randn(m, k)
    bias = torch.randn(37)
    _assert_matches_reference(torch.ops.qwq.ggml_linear(x, raw, t.id, bias, 37), x, raw, t,
                              bias)


@kernel
@pytest.mark.parametrize("t,k", [(t, k) for t in TYPES for k in (256, 1280, 96, 896)
                                 if k % t.block == 0], ids=lambda v: getattr(v, "name", v))
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_kernel_takes_16_bit_activations_and_any_whole_blocks(t, k, dtype):
    raw = _blocks(t, 19, k)
    x = torch.randn(5, k).to(dtype)
    bias = torch.randn(19).to(dtype)
    _assert_matches_reference(torch.ops.qwq.ggml_linear(x, raw, t.id, bias, 19), x, raw, t,
                              bias)


@kernel
@pytest.mark.parametrize("t", TYPES, ids=_ids)
def test_kernel_is_batch_invariant(t):
    """A token's output has the same bits alone, in any batch and at any thread count."""
    x = torch.randn(70, 512, dtype=torch.bfloat16) * 3
    _assert_batch_and_thread_invariant(x, _blocks(t, 45, 512), t.id)



@kernel
@pytest.mark.parametrize("t", [ggml.TYPES["Q6_K"], ggml.TYPES["Q5_0"]], ids=_ids)
def test_kernel_takes_a_strided_view_of_rows(t):
    """Rows need not be adjacent (every other row of a tensor, a slice of a fused one)."""
    raw = _blocks(t, 40, 512)
    x = torch.randn(3, 512)
    got = torch.ops.qwq.ggml_linear(x, raw[1::2], t.id, None, 20)
    assert torch.equal(got, torch.ops.qwq.ggml_linear(x, raw[1::2].contiguous(), t.id, None, 20))


@kernel
def test_kernel_handles_zero_and_tied_activations():
    """All-zero activation blocks (scale 0) and ties for the largest magnitude."""
    for t in (ggml.TYPES["Q4_K"], ggml.TYPES["Q6_K"], ggml.TYPES["Q5_0"]):
        raw = _blocks(t, 8, 512)
        x = torch.zeros(3, 512)
        x[1, 7], x[1, 300] = 1.0, -1.0
        x[2] = torch.randint(-3, 4, (512,)).float()
        _assert_matches_reference(torch.ops.qwq.ggml_linear(x, raw, t.id, None, 8), x, raw, t,
                                  None)


@pytest.fixture(scope="module")
def demo_tensors(demo_gguf):
    return {t.name: t for t in gguf.GGUFReader(str(demo_gguf)).tensors}


@kernel
@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:The given NumPy array is not writable")
@pytest.mark.parametrize("name", ["blk.0.ffn_down.weight", "blk.2.ffn_down.weight",
                                  "blk.0.ffn_gate.weight", "output.weight"])
def test_demo_gguf_tensors_run_in_place(demo_tensors, name):
    """The demo GGUF's Q6_K, Q4_K, Q5_0 and Q8_0 tensors, viewed read-only in the file's mmap,
    against the reference."""
    tensor = demo_tensors[name]
    t = ggml.ggml_type(tensor.tensor_type)
    raw = torch.from_numpy(tensor.data)[:3000]  # a view of the mapping: nothing is copied
    x = torch.randn(3, t.cols(raw.shape[1]), dtype=torch.bfloat16)
    _assert_matches_reference(ggml.linear(x, raw, t, None, raw.shape[0]), x, raw, t, None)


_GUARD_PAGE_CHILD = textwrap.dedent("""
    import ctypes, mmap, torch
    from qwq.kernels import ggml, kernels_available
    assert kernels_available()
    libc = ctypes.CDLL(None)
    for t in ggml.TYPES.values():
        for k in ([256, 512] if t.block == 256 else [128, 96, 160, 384]):
            if k % t.block:
                continue
            rows = 16 if t.group_rows > 1 else 5
            raw = ggml.random_blocks(t, rows, k).view(-1)
            page = mmap.PAGESIZE
            end = -(-raw.numel() // page) * page  # the tensor's last byte ends a page
            mm = mmap.mmap(-1, end + page)
            base = ctypes.addressof(ctypes.c_char.from_buffer(mm))
            assert libc.mprotect(ctypes.c_void_p(base + end), page, 0) == 0  # PROT_NONE
            w = torch.frombuffer(mm, dtype=torch.uint8, count=raw.numel(),
                                 offset=end - raw.numel())
            w.copy_(raw)
            y = torch.ops.qwq.ggml_linear(torch.randn(3, k), w.view(rows, -1), t.id, None, rows)
            assert torch.isfinite(y).all()
    print("ok")
""")


@kernel
def test_kernel_reads_nothing_past_the_tensor():
    """A tensor ending just before an unreadable page (as the last tensor of a mapped file may):
    the kernels stop at its last byte. In a child process, since a stray read would kill it."""
    res = subprocess.run([sys.executable, "-c", _GUARD_PAGE_CHILD], capture_output=True,
                         text=True, timeout=600, check=False)
    assert res.returncode == 0 and "ok" in res.stdout, res.stderr[-2000:]


@kernel
def test_kernel_errors_name_the_type():
    raw = _blocks(ggml.TYPES["Q4_K"], 4, 512)
    x = torch.randn(2, 512)
    with pytest.raises(RuntimeError, match="Q4_K rows of 512 inputs are 288 bytes, got 287"):
        torch.ops.qwq.ggml_linear(x, raw[:, :287], 12, None, 4)
    with pytest.raises(RuntimeError, match="Q4_K takes inputs in whole blocks of 256; x has 384"):
        torch.ops.qwq.ggml_linear(torch.randn(2, 384), raw, 12, None, 4)
    with pytest.raises(RuntimeError, match="GGML type 10 has no kernel"):  # Q2_K
        torch.ops.qwq.ggml_linear(x, raw, 10, None, 4)
    with pytest.raises(RuntimeError, match="out_features is 5"):
        torch.ops.qwq.ggml_linear(x, raw, 12, None, 5)


def test_python_errors_name_the_type():
    raw = _blocks(ggml.TYPES["Q6_K"], 4, 256)
    with pytest.raises(ValueError, match="Q6_K rows hold whole blocks of 210 bytes"):
        ggml.dequantize(raw[:, :200], "Q6_K")
    with pytest.raises(ValueError, match="Q6_K rows hold whole blocks of 256 inputs"):
        ggml.random_blocks("Q6_K", 2, 300)
    with pytest.raises(ValueError, match="GGML type Q2_K has no qwq kernel"):
        ggml.ggml_type(gguf.GGMLQuantizationType.Q2_K)
    with pytest.raises(ValueError, match="Q6_K weights take 256 inputs; x has 512"):
        ggml.linear(torch.randn(1, 512), raw, "Q6_K", None, 4)
    with pytest.raises(ValueError, match="Q6_K weights take 256 inputs; x has 512"):
        ggml.linear_reference(torch.randn(1, 512), raw, "Q6_K", None, 4)


# a q|k|v of three types (two sharing activation records), a gate|up of one, a lone Q6_K
PART_SETS = [("Q5_0", "Q5_0", "Q8_0"), ("Q4_K", "Q6_K"), ("Q4_0", "Q4_1", "Q5_1"), ("Q6_K",),
             # the demo's q|k|v as loaded; interleaved groups behind a part of 37 rows, so that
             # the threads' shares of the rows start inside groups
             ("Q5_0x16", "Q5_0x16", "Q8_0x4"), ("Q8_0", "Q5_0x16")]


@kernel
@pytest.mark.parametrize("names", PART_SETS, ids="|".join)
@pytest.mark.parametrize("m", [1, 3, 17, 40])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fused_parts_are_each_part_as_a_lone_tensor(names, m, dtype):
    """One call over q|k|v equals each part alone, concatenated, bit for bit, with the bias
    added in float32 before the output's rounding; a token's bits do not depend on its batch."""
    types = [ggml.TYPES[n] for n in names]
    rows = [r if t.group_rows == 1 else 16 * (r // 16 + 1) for t, r in zip(types, [37, 16, 21])]
    raws = [_blocks(t, r, 512, seed=i) for i, (t, r) in enumerate(zip(types, rows))]
    x = (torch.randn(m, 512) * 2).to(dtype)
    bias = torch.randn(sum(rows))
    got = ggml.LinearParts(raws, types, bias)(x)
    alone = torch.cat([torch.ops.qwq.ggml_linear(x.float(), r, t.id, None, r.shape[0])
                       for r, t in zip(raws, types)], -1)
    assert torch.equal(got, (alone + bias).to(dtype))
    assert torch.equal(ggml.LinearParts(raws, types, bias)(x[m // 2:m // 2 + 1]),
                       got[m // 2:m // 2 + 1])
    # the torch path (no kernels) computes the same product
    assert torch.allclose(_torch_parts(raws, types, bias, x).float(), got.float(),
                          rtol=2 ** -7, atol=1e-3)


def _torch_parts(raws, types, bias, x):
    real = ggml.kernels_available
    ggml.kernels_available = lambda: False
    try:
        return ggml.LinearParts(raws, types, bias)(x)
    finally:
        ggml.kernels_available = real


def test_fused_parts_refuse_mismatched_parts_by_name():
    q4k, q8 = _blocks(ggml.TYPES["Q4_K"], 4, 512), _blocks(ggml.TYPES["Q8_0"], 4, 256)
    with pytest.raises(ValueError, match="different input widths"):
        ggml.LinearParts([q4k, q8], ["Q4_K", "Q8_0"])
    with pytest.raises(ValueError, match=r"bias must be \(8,\)"):
        ggml.LinearParts([q4k, q4k], ["Q4_K", "Q4_K"], torch.zeros(4))
    with pytest.raises(ValueError, match="take 512 inputs; x has 256"):
        ggml.LinearParts([q4k], ["Q4_K"])(torch.randn(1, 256))
