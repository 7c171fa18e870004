"""`qwq bench`: the table, bad names, and a tiny real run (quick mode) on the demo model."""

import json
import subprocess
import sys

import pytest

from qwq.benchmark import ppl_text, ppl_windows, table
from qwq.cli import main


def test_ppl_text_ships_with_the_package(tokenizer):
    text = ppl_text()  # read through importlib.resources: the package's own data file
    assert text.startswith("Text wrapping and filling.")  # textwrap's docstring opens it
    assert len(ppl_windows(tokenizer, 512)) >= 5  # the windows BENCHMARKS.md scores


def test_table_has_ratios_and_errors():
    result = {"date": "2026-11-29", "machine": "m", "threads": 2, "load_before": "0",
              "load_after": "0", "systems": {
                  "qwq": {"format": "int8", "pp_tok_s": 200.0, "tg_tok_s": 50.0, "ppl": 7.5,
                          "peak_rss_mib": 900, "batch_tok_s": {"16": 160.0},
                          "batch_with_prefill_tok_s": {"16": 120.0}},
                  "llama.cpp": {"format": "GGUF", "pp_tok_s": 100.0, "tg_tok_s": 40.0,
                                "ppl": 7.4, "peak_rss_mib": 600},
                  "transformers": {"error": "exit 1: no module"}},
              "serving_memory": {"seqs": 16, "tokens_per_seq": 2048, "peak_rss_mib": 1200.0,
                                 "rss_over_weights_kv": 1.1, "weights_mib": 700.0,
                                 "kv_cache_mib": 384.0, "load_peak_rss_mib": 2000.0,
                                 "peak_excludes_loading": True, "runtime_rss_mib": 300.0,
                                 "model_rss_over_weights_kv": 0.833}}
    text = table(result)
    assert "1.25" in text  # tg ratio to llama.cpp
    assert "     2.00 " in text  # pp ratio to llama.cpp
    assert "less the runtime before the model (300 MiB" in text and "0.83x" in text
    assert ("160.0 tok/s aggregate decode = 3.20x its batch-1 decode; 120.0 tok/s counting the "
            "prefills") in text
    assert "transformers  error: exit 1" in text
    assert "1.10x weights" in text


def test_unknown_system_is_a_clear_error(capsys):
    assert main(["bench", "--systems", "qwq,vllm"]) == 2
    assert "unknown system or test 'vllm'" in capsys.readouterr().err


def _bench(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "qwq.cli", "bench", "--quick", *args],
                          capture_output=True, text=True, timeout=1200, check=False)


@pytest.mark.slow
def test_quick_bench_qwq_and_llama_cpp_json():
    proc = _bench("--systems", "qwq,llama.cpp", "--tests", "pp,tg,ppl", "--json")
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert set(result["systems"]) == {"qwq", "llama.cpp"}
    for r in result["systems"].values():
        assert "error" not in r, r
        assert r["pp_tok_s"] > 0 and r["tg_tok_s"] > 0 and r["peak_rss_mib"] > 100
        assert 1 < r["ppl"] < 1000
    qwq, llama = result["systems"]["qwq"], result["systems"]["llama.cpp"]
    assert abs(qwq["ppl"] / llama["ppl"] - 1) < 0.05  # same weights, same token ids


@pytest.mark.slow
def test_quick_bench_qwq_alone_table():
    proc = _bench("--systems", "qwq", "--tests", "tg,batch,mem")
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = proc.stdout.strip().splitlines()
    assert lines[0].startswith("qwq bench") and lines[1].split()[:2] == ["system", "format"]
    assert lines[2].startswith("qwq ")
    assert any(ln.startswith("qwq batch   4:") for ln in lines)
    assert any("qwq serving 2 x 128 tokens: peak RSS" in ln for ln in lines)
    assert any("less the runtime before the model" in ln for ln in lines)


ROOT = __import__("pathlib").Path(__file__).resolve().parents[1]


def test_gpu_check_runs_every_step_on_cpu(tmp_path):
    """bench/gpu.py, issue 5's one-call GPU check, run on a small config on CPU. In float32 the
    greedy tokens of qwq and of transformers (whose parameters are views of qwq's fused
    tensors) agree, which checks the views; the limit counts the bytes a step reads."""
    out = tmp_path / "gpu.json"
    run = subprocess.run([sys.executable, "bench/gpu.py", "--device", "cpu", "--config", "tiny",
                          "--dtype", "float32", "--copy-mib", "16", "--prompt", "16",
                          "--new", "16", "--out", str(out)], check=False,
                         cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    res = json.loads(out.read_text())
    assert res["greedy_tokens_agree"] == 16 and res["graphs_eager_tokens_agree"] == 16
    assert res["qwq_tok_s"] > 0 and res["transformers_tok_s"] > 0
    assert 0 < res["read_per_token_gb"] < res["weights_gb"]
    assert res["limit_tok_s"] > res["limit_all_weights_tok_s"] > 0
    assert res["qwq_fraction_of_limit"] == round(res["qwq_tok_s"] / res["limit_tok_s"], 3)


def test_gpu_int4_check_runs_every_step_on_cpu(tmp_path):
    """bench/gpu.py --int4 (issue 15's check) on a small config on CPU, through the CPU form
    of the same kernel: codes against their dequantized weights, both layouts built, sized
    as `qwq plan` counts them, and decoding the same tokens with and without the padded
    (graph) step (CUDA-only figures are absent, not failing)."""
    out = tmp_path / "int4.json"
    run = subprocess.run([sys.executable, "bench/gpu.py", "--int4", "--device", "cpu",
                          "--config", "tiny", "--prompt", "16", "--new", "8", "--out", str(out)],
                         check=False, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    res = json.loads(out.read_text())
    assert set(res["kernel"]) == {"awq", "Q4_0", "Q4_1", "Q4_K"}
    assert all(k["ok"] for k in res["kernel"].values()), res["kernel"]
    for layout in ("awq", "q4_k_m"):
        r = res[layout]
        assert "error" not in r, r
        assert abs(r["weights_gb"] - r["plan_weights_gb"]) <= 0.002, r
        assert r["eager_tok_s"] > 0
        # bf16 logits of a random model hold exact ties; the padded step may break one the
        # other way, with the two picks a few bf16 steps apart at most in either run
        agree, gap = r["graphs_eager_tokens_agree"], r["graphs_eager_parting_gap"]
        assert agree == 8 or (gap is not None and gap <= 2 ** -5), r
        assert "peak_reserved_gb" not in r


def test_gpu_check_tokenizer_travels_as_files(tmp_path, tokenizer):
    """The device machine has no demo model: the exported tokenizer files rebuild the same
    tokenizer (ids, stop ids, chat template)."""
    from qwq.tokenizer import Tokenizer
    run = subprocess.run([sys.executable, "bench/gpu.py", "--export-tokenizer",
                          str(tmp_path / "tok")], check=False, cwd=ROOT, capture_output=True,
                         text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    again = Tokenizer.from_dir(tmp_path / "tok")
    text = "Hello <|im_start|>user\n世界 42<|im_end|>"
    assert again.encode(text, allow_special=True) == tokenizer.encode(text, allow_special=True)
    assert again.eos_token_ids == tokenizer.eos_token_ids
    msgs = [{"role": "user", "content": "2+2?"}]
    assert again.encode_chat(msgs) == tokenizer.encode_chat(msgs)
