"""qwq's kernels built for AVX2 (qwq/kernels/isa.h): the same source as the AVX-512 build, on
pairs of AVX2 registers. An AVX-512 host runs both builds, so here the AVX2 one runs the kernel
tests, and gives the same bits as the AVX-512 one on a whole greedy decode of the demo GGUF.
Each build runs in its own process (QWQ_CPU_KERNELS picks it; both register torch.ops.qwq)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from qwq.kernels import ISAS, cpu_flags, kernel_isa

ROOT = Path(__file__).resolve().parents[1]
both = pytest.mark.skipif(not all(needs <= cpu_flags() for _, needs in ISAS.values()),
                          reason="the CPU runs only one of the kernel builds")

DECODE = """
import json, sys
from qwq import LLM, SamplingParams
from qwq.kernels import kernel_isa, kernels_available
assert kernels_available(), "the kernels did not build"
llm = LLM(sys.argv[1], max_model_len=512, kv_cache_memory=64 << 20, enable_prefix_caching=False)
prompts = ["The history of the printing press begins", "def fibonacci(n):"]
ids = [llm.tokenizer.encode(p) for p in prompts]
params = SamplingParams(temperature=0, max_tokens=24, ignore_eos=True, logprobs=3)
outs = llm.generate(ids, params)
print(json.dumps({"isa": kernel_isa(), "quantize": llm.engine.config.quantize,
                  "tokens": [o.outputs[0].token_ids for o in outs],
                  "logprobs": [[{str(k): v for k, v in step.items()}
                                for step in o.outputs[0].logprobs] for o in outs]}))
"""


def _run(isa: str, args: list[str], timeout: int = 1200) -> subprocess.CompletedProcess:
    env = {**os.environ, "QWQ_CPU_KERNELS": isa}
    return subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout, check=False)


def test_the_choice_is_checked(monkeypatch):
    monkeypatch.setenv("QWQ_CPU_KERNELS", "avx1024")
    with pytest.raises(ValueError, match="QWQ_CPU_KERNELS='avx1024'"):
        kernel_isa()
    monkeypatch.setenv("QWQ_CPU_KERNELS", "none")
    assert kernel_isa() is None
    monkeypatch.setenv("QWQ_CPU_KERNELS", "avx2")
    assert kernel_isa() == ("avx2" if ISAS["avx2"][1] <= cpu_flags() else None)
    monkeypatch.delenv("QWQ_CPU_KERNELS")
    runs = [isa for isa, (_, needs) in ISAS.items() if needs <= cpu_flags()]
    assert kernel_isa() == (runs[0] if runs else None)  # the best the CPU runs


@both
@pytest.mark.slow
def test_the_kernel_tests_pass_on_the_avx2_build():
    run = _run("avx2", ["-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_kernels.py",
                        "tests/test_kernels_gguf.py", "tests/test_decode_layer.py",
                        "tests/test_kv_cache.py"], timeout=2400)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-2000:]
    assert " passed" in run.stdout and "skipped" not in run.stdout.splitlines()[-1]


@both
@pytest.mark.slow
def test_avx2_decodes_the_demo_gguf_bit_for_bit_as_avx512(demo_gguf):
    """Q5_0, Q4_K, Q6_K and Q8_0 linears, the token table's rows, attention, the norms and the
    greedy pick, in both builds: the same tokens and the same logprobs, to the bit."""
    res = {}
    for isa in ("avx512", "avx2"):
        run = _run(isa, ["-c", DECODE, str(demo_gguf)])
        assert run.returncode == 0, run.stderr[-3000:]
        res[isa] = json.loads(run.stdout.strip().splitlines()[-1])
        assert res[isa]["isa"] == isa and res[isa]["quantize"] == "gguf"
    assert res["avx2"]["tokens"] == res["avx512"]["tokens"]
    assert res["avx2"]["logprobs"] == res["avx512"]["logprobs"]
