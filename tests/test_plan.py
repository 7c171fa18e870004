"""qwq plan against the arithmetic in DESIGN.md: QwQ-32B-Preview is 65.5 GB in bf16 and
holds 256 KiB of KV cache per token; the cache takes 85% of what the weights and torch's
0.75 GiB leave, as the engine sizes it."""

import subprocess
import sys

import pytest

from qwq.config import PRESETS
from qwq.plan import CUDA_RESERVE, GIB, KV_SHARE, parse_size, plan

QWQ = PRESETS["qwq-32b-preview"]


def test_qwq_32b_weights_and_kv_per_token():
    p = plan(QWQ, gpus=1, gpu_memory=141e9)
    assert abs(p.weights_per_rank / 1e9 - 65.5) < 0.2
    assert p.kv_bytes_per_token_per_rank == 256 * 1024
    # H200: 85% of 141 GB - 0.75 GiB - 65.5 GB for the cache, 256 KiB a token
    assert CUDA_RESERVE == 0.75 * GIB and KV_SHARE == 0.85
    expected = int((141e9 - 0.75 * GIB - p.weights_per_rank) * 0.85 // (256 * 1024))
    assert p.kv_tokens == expected and p.max_seqs == expected // 32768


def test_two_gpus_halve_weights_and_kv_per_rank():
    one, two = plan(QWQ, 1, 80e9), plan(QWQ, 2, 80e9)
    assert abs(two.weights_per_rank * 2 - one.weights_per_rank) < 1
    assert two.kv_bytes_per_token_per_rank == 128 * 1024
    assert 0 < one.kv_tokens < two.kv_tokens  # 80 GB holds the weights and some cache


def test_int4_on_a_24gb_gpu():
    p = plan(QWQ, 1, parse_size("24GB"), quantize="int4")
    assert 17e9 < p.weights_per_rank < 20e9
    assert p.kv_tokens > 0


def test_cli_plan_prints_the_figures():
    r = subprocess.run([sys.executable, "-m", "qwq.cli", "plan", "--model", "qwq-32b-preview",
                        "--gpus", "2", "--gpu-memory", "80GB"], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0, r.stderr
    assert "weights per GPU" in r.stdout and "32.76 GB" in r.stdout


# QwQ-32B's shape: 64 layers, hidden 5120, intermediate 27648, 40 / 8 heads of 128, vocab
# 152064, untied head. Per layer 62,921,728 attention weights (biases included) + 424,673,280
# MLP + 10,240 norm = 487,605,248; x 64 + the final norm = 31,206,740,992; table = head =
# 778,567,680.
LAYERS, TABLE = 31_206_740_992, 778_567_680
INT8 = 1 + 2 / 4096


@pytest.mark.parametrize("setup, weights", [
    # AWQ: int4 at groups of 128 (0.5 + 4/128 bytes), the head int8, the table 16-bit
    ("awq", LAYERS * (0.5 + 4 / 128) + TABLE * INT8 + TABLE * 2),
    ("int4", LAYERS * (0.5 + 4 / 128) + TABLE * INT8 + TABLE * 2),
    # a Q4_K_M GGUF: int4 at groups of 32 (0.5 + 4/32), head int8, the table as Q4_K (4.5 bits)
    ("q4_k_m", LAYERS * (0.5 + 4 / 32) + TABLE * INT8 + TABLE * 4.5 / 8),
    ("int8", LAYERS * INT8 + TABLE * INT8 + TABLE * 2),
    ("none", (LAYERS + 2 * TABLE) * 2),
])
@pytest.mark.parametrize("kv, kv_token", [("bfloat16", 2 * 64 * 8 * 128 * 2),
                                          ("fp8", 2 * 64 * 8 * (128 + 2))])
def test_qwq_32b_on_one_24gib_gpu(setup, weights, kv, kv_token):
    memory = parse_size("24GiB")
    p = plan(QWQ, 1, memory, quantize=setup, kv_cache_dtype=kv)
    assert p.params == LAYERS + 2 * TABLE
    assert abs(p.weights_per_rank - weights) < 1e3
    assert p.kv_bytes_per_token_per_rank == kv_token
    free = memory - 0.75 * GIB - weights
    assert p.fits == (free > 0)
    assert p.kv_tokens == (int(free * 0.85 // kv_token) if free > 0 else 0)


def test_the_24gib_figures_the_readme_gives():
    tokens = {(s, kv): plan(QWQ, 1, parse_size("24GiB"), quantize=s, kv_cache_dtype=kv).kv_tokens
              for s in ("awq", "q4_k_m", "int8", "none") for kv in ("bfloat16", "fp8")}
    assert tokens == {("awq", "bfloat16"): 19_616, ("awq", "fp8"): 38_629,
                      ("q4_k_m", "bfloat16"): 13_759, ("q4_k_m", "fp8"): 27_094,
                      ("int8", "bfloat16"): 0, ("int8", "fp8"): 0,
                      ("none", "bfloat16"): 0, ("none", "fp8"): 0}


def test_cli_plans_a_4_bit_checkpoint():
    r = subprocess.run([sys.executable, "-m", "qwq.cli", "plan", "--gpu-memory", "24GiB",
                        "--quantize", "q4_k_m", "--kv-cache-dtype", "fp8"],
                       check=False, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert "20.72 GB (q4_k_m" in r.stdout and "27,094" in r.stdout
