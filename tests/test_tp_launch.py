"""Tensor-parallel ranks start from any script: a file without an `if __name__ ==
"__main__":` guard and `python -` give one rank's greedy tokens; a rank that dies while
starting is reported with the end of its stderr; no rank outlives rank 0, however rank 0
ends. Every script here is a real Python process, and so is every rank it starts."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_server_support import tiny_model_dir

from qwq import LLM, SamplingParams
from qwq.distributed import TensorParallelError
from qwq.errors import CheckpointError

REPO = str(Path(__file__).resolve().parent.parent)
TINY = {"dtype": "float32", "device": "cpu", "num_kv_blocks": 64, "block_size": 4}
PROMPTS = [list(range(100, 140)), list(range(100, 107))]

# No main guard, no shutdown(): the ranks stop when the script ends. qwq is found only
# through the script's own sys.path edit (the environment has no PYTHONPATH), so the
# ranks must import the same qwq without help.
GENERATE = """
import json, sys
sys.path.insert(0, sys.argv[1])
from qwq import LLM, SamplingParams
size, opts, prompts = int(sys.argv[3]), json.loads(sys.argv[4]), json.loads(sys.argv[5])
llm = LLM(sys.argv[2], tensor_parallel_size=size, **opts)
params = SamplingParams(temperature=0, max_tokens=12, ignore_eos=True)
outs = llm.chat(prompts, params) if isinstance(prompts[0][0], dict) else \\
    llm.generate(prompts, params)
print(json.dumps([o.outputs[0].token_ids for o in outs]))
"""

# Loads, says so, then fails or sleeps until it is killed.
LOAD_THEN = """
import sys, time
sys.path.insert(0, sys.argv[1])
from qwq import LLM
llm = LLM(sys.argv[2], tensor_parallel_size=2, dtype="float32", device="cpu",
          num_kv_blocks=64, block_size=4)
print("loaded", flush=True)
if sys.argv[3] == "raise":
    raise RuntimeError("the script fails after loading")
time.sleep(600)
"""


def script_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}


def run_script(tmp_path, source: str, how: str, *args: str) -> subprocess.CompletedProcess:
    """Run source as a file (`python script.py`) or from stdin (`python -`)."""
    if how == "file":
        path = tmp_path / "script.py"
        path.write_text(source)
        argv, stdin = [sys.executable, str(path)], None
    else:
        argv, stdin = [sys.executable, "-"], source
    return subprocess.run([*argv, *args], input=stdin, capture_output=True, text=True,
                          env=script_env(), cwd=tmp_path, timeout=900, check=False)


def rank_pids(stderr: str) -> list[int]:
    return [int(p) for p in re.findall(r"tensor-parallel rank \d+ runs as pid (\d+)", stderr)]


def alive(pid: int) -> bool:
    """Whether pid runs (a zombie nobody has reaped yet does not)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def gone_within(pid: int, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    return not alive(pid)


def tp2_tokens(tmp_path, how: str, model: str, opts: dict, prompts: list) -> list:
    r = run_script(tmp_path, GENERATE, how, REPO, model, "2", json.dumps(opts),
                   json.dumps(prompts))
    assert r.returncode == 0, r.stderr[-3000:]
    assert "if __name__" not in r.stderr and "freeze_support" not in r.stderr
    (pid,) = rank_pids(r.stderr)
    assert gone_within(pid, 5), "rank 1 outlived the script"
    return json.loads(r.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("how", ["file", "stdin"])
def test_tp2_from_a_script_without_main_guard_equals_one_rank(tmp_path, how):
    one = LLM(str(tiny_model_dir()), **TINY)
    want = [o.outputs[0].token_ids for o in one.generate(
        PROMPTS, SamplingParams(temperature=0, max_tokens=12, ignore_eos=True))]
    assert tp2_tokens(tmp_path, how, str(tiny_model_dir()), TINY, PROMPTS) == want


@pytest.mark.slow
def test_demo_model_tp2_from_a_script_and_from_stdin_equals_one_rank(tmp_path):
    """float32: in bf16 the row-parallel partial sums round differently from one whole sum,
    and near-ties in a greedy run can flip on that alone."""
    chats = [[{"role": "user", "content": q}] for q in
             ("What is 2+2?", "Write a Python function that reverses a string.")]
    opts = {"max_model_len": 2048, "kv_cache_memory": 64 << 20, "dtype": "float32"}
    r = run_script(tmp_path, GENERATE, "file", REPO, "qwq-demo", "1", json.dumps(opts),
                   json.dumps(chats))
    assert r.returncode == 0, r.stderr[-3000:]
    want = json.loads(r.stdout.strip().splitlines()[-1])
    assert tp2_tokens(tmp_path, "file", "qwq-demo", opts, chats) == want
    assert tp2_tokens(tmp_path, "stdin", "qwq-demo", opts, chats) == want


def test_a_rank_that_dies_while_starting_is_reported_with_its_stderr(monkeypatch):
    """A broken environment for new interpreters (PYTHONHOME pointing nowhere): rank 1's
    Python cannot start, and only its stderr says why."""
    monkeypatch.setenv("PYTHONHOME", "/nonexistent")
    with pytest.raises(TensorParallelError) as e:
        LLM(str(tiny_model_dir()), tensor_parallel_size=2, **TINY)
    message = str(e.value)
    assert re.match(r"tensor-parallel rank 1 \(pid \d+\) exited with code 1 while starting",
                    message), message
    assert "The end of its stderr:" in message
    assert "No module named 'encodings'" in message  # the rank's own words
    pid = int(re.search(r"pid (\d+)", message).group(1))
    assert not alive(pid)


def test_a_start_that_fails_on_rank_0_leaves_no_rank_behind(tmp_path, capfd):
    """Rank 0 alone reads the tokenizer: a corrupt one fails its start while rank 1 loads.
    The caller (a notebook, a server retrying) lives on; rank 1 must not."""
    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir(), model)
    (model / "tokenizer.json").write_text('{"broken": ')
    with pytest.raises(CheckpointError, match="tokenizer.json"):
        LLM(str(model), tensor_parallel_size=2, **TINY)
    (pid,) = rank_pids(capfd.readouterr().err)
    assert not alive(pid)


def start_loading(tmp_path, then: str) -> tuple[subprocess.Popen, int]:
    """A script that builds a TP=2 LLM, and rank 1's pid once it has been started."""
    path = tmp_path / "load.py"
    path.write_text(LOAD_THEN)
    # Ctrl-C as at a terminal: a suite started in the background by a non-interactive shell
    # inherits SIGINT ignored, and a Python started with it ignored never raises
    # KeyboardInterrupt
    proc = subprocess.Popen([sys.executable, str(path), REPO, str(tiny_model_dir()), then],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=script_env(), cwd=tmp_path,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    for line in proc.stderr:
        if pids := rank_pids(line):
            return proc, pids[0]
    raise AssertionError(f"no rank started: exit {proc.wait()}")


def end(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.kill()
        proc.wait()


def test_no_rank_outlives_a_killed_rank_0(tmp_path):
    proc, pid = start_loading(tmp_path, "sleep")
    try:
        assert proc.stdout.readline().strip() == "loaded"
        assert alive(pid)
        proc.kill()  # no atexit, no finally: the rank must notice on its own
        proc.wait()
        assert gone_within(pid, 5)
    finally:
        end(proc)


def test_no_rank_outlives_a_script_that_fails_after_loading(tmp_path):
    proc, pid = start_loading(tmp_path, "raise")
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 1 and "the script fails after loading" in err
    assert gone_within(pid, 5)


def test_no_rank_outlives_ctrl_c_while_starting(tmp_path):
    proc, pid = start_loading(tmp_path, "sleep")
    try:
        proc.send_signal(signal.SIGINT)  # rank 1 is still importing torch or joining
        _, err = proc.communicate(timeout=120)
        assert "KeyboardInterrupt" in err
        assert gone_within(pid, 5)
    finally:
        end(proc)


def test_rank_options_survive_the_command_line():
    import torch

    from qwq.config import EngineConfig
    from qwq.distributed.launch import RankOptions
    for dtype in ("auto", "bfloat16", torch.float32):
        opts = RankOptions("/models/x", dtype, "cpu", EngineConfig(quantize="int8",
                                                                  max_model_len=99))
        assert RankOptions.from_json(json.loads(json.dumps(opts.to_json()))) == opts


@pytest.mark.parametrize("bad,why", [
    (["--rank", "0"], "--rank must lie in 1..1"),
    (["--qwq-root", "/elsewhere"], "rank 0 from /elsewhere"),
])
def test_a_worker_refuses_a_bad_command_line(bad, why):
    from qwq.distributed.ranks import qwq_root
    args = {"--rank": "1", "--size": "2", "--port": "1", "--parent-pid": str(os.getpid()),
            "--options": "{}", "--qwq-root": qwq_root(), **dict(zip(bad[::2], bad[1::2]))}
    r = subprocess.run([sys.executable, "-m", "qwq.distributed.worker",
                        *[x for kv in args.items() for x in kv]],
                       capture_output=True, text=True, timeout=120, check=False)
    assert r.returncode == 2 and why in r.stderr, r.stderr
