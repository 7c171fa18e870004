"""Tensor parallelism on CPU with gloo: shards load only their slice, TP=2 computes what TP=1
does (logits on a random config, greedy text on the demo model, through qwq.LLM and through a
live `qwq serve --tensor-parallel-size 2`), and a rank killed mid-generation stops the server
with an error naming it."""

from __future__ import annotations

import gc
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time

import httpx
import openai
import pytest
import torch
from test_server_support import tiny_model_dir

from qwq import LLM, SamplingParams
from qwq.distributed import TensorParallelError, check_tp_size
from qwq.model import AttentionMetadata
from qwq.weights import open_checkpoint

TINY = {"dtype": "float32", "device": "cpu", "num_kv_blocks": 64, "block_size": 4}


def full_forward(llm: LLM, ids: list[int]) -> torch.Tensor:
    """Logits at every position of one prompt, through the runner's model and KV cache (on
    rank 0 of a TP engine this drives every rank)."""
    runner = llm.engine.runner
    T, blocks = len(ids), -(-len(ids) // runner.block_size)
    meta = AttentionMetadata(positions=torch.arange(T), slot_mapping=torch.arange(T),
                             query_lens=[T], context_lens=[T],
                             block_tables=torch.arange(blocks)[None],
                             context_lens_t=torch.tensor([T]), logits_indices=torch.arange(T))
    with torch.inference_mode():
        return runner.model(torch.tensor(ids), meta, runner.kv)


def test_tp_size_that_does_not_divide_kv_heads_is_refused(tiny_config):
    with pytest.raises(TensorParallelError, match="num_key_value_heads=2"):
        check_tp_size(tiny_config, 4)
    with pytest.raises(TensorParallelError, match="divides 2"):
        LLM(str(tiny_model_dir()), tensor_parallel_size=3, **TINY)  # refused before spawning


def test_safetensors_slices_are_the_full_tensors_slices():
    ckpt = open_checkpoint(tiny_model_dir())
    for name, dim in [("model.layers.0.self_attn.q_proj.weight", 0),
                      ("model.layers.1.mlp.down_proj.weight", 1),
                      ("model.layers.0.self_attn.k_proj.bias", 0)]:
        full = dict(ckpt.iter_tensors(names=[name]))[name]
        half = full.shape[dim] // 2
        got = ckpt.load_slice(name, dim, half, full.shape[dim])
        assert torch.equal(got, full.narrow(dim, half, full.shape[dim] - half))


def test_tp2_logits_and_greedy_tokens_equal_tp1_on_a_random_model():
    ids = list(range(100, 140))
    params = SamplingParams(temperature=0, max_tokens=20, ignore_eos=True)
    prompts = [ids, ids[:7], ids[:30] + [5, 6]]  # the third shares a cached prefix
    one = LLM(str(tiny_model_dir()), **TINY)
    want_logits, want = full_forward(one, ids), one.generate(prompts, params)
    two = LLM(str(tiny_model_dir()), tensor_parallel_size=2, **TINY)
    try:
        assert two.engine.runner.kv.k.shape[2] == 1  # each rank caches 1 of the 2 KV heads
        got_logits = full_forward(two, ids)
        assert got_logits.shape == want_logits.shape
        torch.testing.assert_close(got_logits, want_logits, rtol=1e-4, atol=1e-4)
        got = two.generate(prompts, params)
    finally:
        two.shutdown()
    assert [o.outputs[0].token_ids for o in got] == [o.outputs[0].token_ids for o in want]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _start_server(model: str, log_path, *extra: str) -> tuple[subprocess.Popen, str]:
    port = _free_port()
    cmd = [sys.executable, "-m", "qwq.cli", "serve", "--model", model,
           "--tensor-parallel-size", "2", "--device", "cpu", "--port", str(port), *extra]
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT,
                                env={**os.environ, "PYTHONUNBUFFERED": "1"})
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 300
    while True:
        assert proc.poll() is None, log_path.read_text()[-3000:]
        assert time.monotonic() < deadline, "the server did not start"
        try:
            if httpx.get(url + "/health", timeout=1).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            pass
        time.sleep(0.2)


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_killing_a_rank_mid_generation_stops_the_server_naming_the_rank(tmp_path):
    log_path = tmp_path / "serve.log"
    proc, url = _start_server(str(tiny_model_dir()), log_path, "--dtype", "float32",
                              "--max-model-len", "1024")
    try:
        rank1 = int(re.search(r"rank 1 runs as pid (\d+)", log_path.read_text()).group(1))
        body = {"messages": [{"role": "user", "content": "Hi"}], "stream": True,
                "max_tokens": 900, "ignore_eos": True, "temperature": 0}
        events, finished = [], False
        try:
            with httpx.stream("POST", url + "/v1/chat/completions", json=body,
                              timeout=30) as r:
                for line in r.iter_lines():
                    if not line.startswith("data: "):
                        continue
                    if not events:  # generation is under way: kill rank 1
                        os.kill(rank1, signal.SIGKILL)
                        killed = time.monotonic()
                    events.append(line[6:])
                    finished |= '"finish_reason":"length"' in line.replace(" ", "")
        except httpx.HTTPError:
            pass  # the server went away mid-stream
        assert not finished, "the generation completed although a rank died"
        try:  # the watchdog polls every 0.2 s and exits 2 s after; a loaded CI box is slower
            code = proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            raise AssertionError("the server kept running after rank 1 died:\n"
                                 + log_path.read_text()[-3000:]) from None
        assert code == 1, log_path.read_text()[-3000:]
        assert time.monotonic() - killed < 45
    finally:
        _stop(proc)
    log = log_path.read_text()
    assert "tensor-parallel rank 1" in log and "killed by SIGKILL" in log, log[-3000:]


@pytest.mark.slow
def test_demo_model_tp2_greedy_equals_tp1_through_the_engine_and_the_server(tmp_path):
    chats = [[{"role": "user", "content": q}] for q in
             ("What is 2+2?", "Write a Python function that reverses a string.",
              "Name three primary colors.")]
    """float32: in bf16 the row-parallel partial sums round differently from one whole sum,
    and near-ties in a greedy run can flip on that alone."""
    params = SamplingParams(temperature=0, max_tokens=24)
    opts = {"max_model_len": 2048, "kv_cache_memory": 64 << 20, "dtype": "float32"}
    one = LLM("qwq-demo", **opts)
    want = [o.outputs[0].text for o in one.chat(chats, params)]
    del one
    gc.collect()
    two = LLM("qwq-demo", tensor_parallel_size=2, **opts)
    try:
        assert [o.outputs[0].text for o in two.chat(chats, params)] == want
    finally:
        two.shutdown()
    del two
    gc.collect()
    proc, url = _start_server("qwq-demo", tmp_path / "serve.log", "--max-model-len", "2048",
                              "--dtype", "float32")
    try:
        client = openai.OpenAI(base_url=url + "/v1", api_key="x", max_retries=0, timeout=300)
        got = [client.chat.completions.create(model="qwq-demo", messages=c, temperature=0,
                                              max_tokens=24).choices[0].message.content
               for c in chats]
    finally:
        _stop(proc)
    assert got == want, json.dumps([got, want])
