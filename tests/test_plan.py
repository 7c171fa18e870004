"""qwq plan against the arithmetic in DESIGN.md: QwQ-32B-Preview is 65.5 GB in bf16 and
holds 256 KiB of KV cache per token."""

import subprocess
import sys

from qwq.config import PRESETS
from qwq.plan import GIB, parse_size, plan

QWQ = PRESETS["qwq-32b-preview"]


def test_qwq_32b_weights_and_kv_per_token():
    p = plan(QWQ, gpus=1, gpu_memory=141e9)
    assert abs(p.weights_per_rank / 1e9 - 65.5) < 0.2
    assert p.kv_bytes_per_token_per_rank == 256 * 1024
    # H200: 141 GB * 0.9 - 65.5 GB - 2 GiB left for the cache, 256 KiB a token
    expected = int((141e9 * 0.9 - p.weights_per_rank - 2 * GIB) // (256 * 1024))
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
