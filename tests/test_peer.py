"""The llama.cpp peer runs only in child processes: a peer that crashes is a clear failure of
that comparison (the tool, the signal, its stderr), and the test run or `qwq bench` goes on."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from qwq.benchmark import llama_cpp
from qwq.benchmark.llama_cpp import PeerError

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def crashing_peer(tmp_path, monkeypatch):
    """A bin directory whose llama.cpp tools write to stderr, then die of SIGSEGV, as the
    native builds did on this project's Intel machines."""
    for name in llama_cpp.TOOLS:
        tool = tmp_path / name
        tool.write_text("#!/bin/sh\necho 'ggml: loading model' >&2\n"
                        "echo 'about to crash in ggml_compute_forward' >&2\nkill -SEGV $$\n")
        tool.chmod(0o755)
    monkeypatch.setenv("QWQ_LLAMA_CPP_BIN", str(tmp_path))
    return tmp_path


def test_a_crashing_tool_is_a_peer_error_naming_signal_and_stderr(crashing_peer, demo_gguf):
    with pytest.raises(PeerError) as err:
        llama_cpp.perplexity(str(demo_gguf), "some text " * 100, 64, 1, threads=1)
    msg = str(err.value)
    assert msg.startswith("llama-perplexity: killed by SIGSEGV (exit -11)"), msg
    assert "about to crash in ggml_compute_forward" in msg


def test_a_missing_build_says_how_to_build(tmp_path, monkeypatch):
    monkeypatch.setenv("QWQ_LLAMA_CPP_BIN", str(tmp_path / "nowhere"))
    with pytest.raises(PeerError, match=r"llama-bench is not built .* `./scripts/setup --bench`"):
        llama_cpp.bench("model.gguf", 1, 8, 8, 1)


def test_describe_exit():
    from qwq.procs import describe_exit
    assert describe_exit(-11) == "killed by SIGSEGV (exit -11)"
    assert describe_exit(-4) == "killed by SIGILL (exit -4)"
    assert describe_exit(2) == "exited with code 2"


def test_cmake_options_follow_the_cpu_and_never_amx():
    zen4 = {"avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512dq", "avx512vl",
            "avx512_vnni", "avx512_bf16", "avx512vbmi"}
    intel = zen4 | {"amx_tile", "amx_int8", "amx_bf16", "avx512_fp16"}
    avx2_only = {"avx", "avx2", "fma", "f16c"}
    for flags in (zen4, intel, avx2_only):
        opts = llama_cpp.cmake_options(flags)
        assert "-DGGML_NATIVE=OFF" in opts and "-DGGML_AMX_INT8=OFF" in opts
        assert not any("AMX" in o and o.endswith("=ON") for o in opts)
    assert "-DGGML_AVX512_VNNI=ON" in llama_cpp.cmake_options(intel)
    assert llama_cpp.cmake_options(intel) == llama_cpp.cmake_options(zen4)  # AMX changes nothing
    plain = llama_cpp.cmake_options(avx2_only)
    assert "-DGGML_AVX2=ON" in plain and "-DGGML_AVX512=OFF" in plain
    assert "-DGGML_AVX512_VNNI=OFF" in plain


def test_bench_reports_a_crashing_peer_and_finishes(crashing_peer):
    """`qwq bench` with the crashing peer: exit 0, the llama.cpp column is its error."""
    proc = subprocess.run([sys.executable, "-m", "qwq.cli", "bench", "--quick", "--systems",
                           "llama.cpp", "--tests", "pp,tg", "--json"], capture_output=True,
                          text=True, timeout=300, check=False,
                          env={**os.environ, "QWQ_LLAMA_CPP_BIN": str(crashing_peer)})
    assert proc.returncode == 0, proc.stderr[-2000:]
    error = json.loads(proc.stdout.strip().splitlines()[-1])["systems"]["llama.cpp"]["error"]
    assert error.startswith("llama-bench: killed by SIGSEGV (exit -11)"), error
    assert "about to crash" in error


def test_a_test_run_survives_a_crashing_peer(crashing_peer, tmp_path):
    """A pytest run in which a comparison's peer crashes: that test fails with the peer's
    signal and stderr, and the tests after it still run and pass."""
    suite = tmp_path / "test_inner.py"
    suite.write_text(textwrap.dedent('''
        from qwq.benchmark import llama_cpp

        def test_compare_with_llama_cpp():
            llama_cpp.bench("model.gguf", 1, 8, 8, 1)

        def test_after_the_crash():
            assert 1 + 1 == 2
    '''))
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                           str(suite)], capture_output=True, text=True, timeout=300, check=False,
                          cwd=tmp_path, env={**os.environ, "QWQ_LLAMA_CPP_BIN":
                                             str(crashing_peer)})
    out = proc.stdout
    assert "1 failed, 1 passed" in out, out[-3000:]
    assert "PeerError: llama-bench: killed by SIGSEGV (exit -11)" in out
    assert "Fatal Python error" not in out + proc.stderr
