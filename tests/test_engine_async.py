"""The engine for asyncio callers: outputs a slow consumer has not read arrive merged, and the
thread that built the engine hands its OpenMP workers back."""

import asyncio
import json
import os
import subprocess
import sys
import time

import pytest
import torch

from qwq.config import EngineConfig
from qwq.engine.async_engine import AsyncEngine
from qwq.models import engine_for
from qwq.sampling_params import SamplingParams


def test_a_consumer_that_falls_behind_reads_the_same_tokens_merged(net, tokenizer):
    engine = engine_for(net, tokenizer, EngineConfig(num_kv_blocks=256, block_size=4))
    aeng = AsyncEngine(engine)
    params = SamplingParams(temperature=0, max_tokens=40, ignore_eos=True)
    ids = tokenizer.encode("The quick brown fox")

    async def consume() -> list:
        outs = []
        async for out in aeng.generate(ids, params):
            outs.append(out)
            while len(outs) == 1 and engine.counters["generation_tokens"] < 10:
                time.sleep(0.01)  # noqa: ASYNC251 (blocks the loop on purpose: outputs pile up)
        return outs

    try:
        outs = asyncio.run(consume())
    finally:
        aeng.shutdown()
    final = outs[-1].outputs[0]
    assert final.finish_reason == "length" and len(final.token_ids) == 40
    assert len(outs) < 40  # some arrived merged
    assert [t for o in outs for t in o.outputs[0].delta_token_ids] == final.token_ids
    assert "".join(o.outputs[0].delta_text for o in outs) == final.text
    assert not engine.has_unfinished() and aeng.num_active() == 0


# In a process of its own: the suite's process has other threads (servers, engines of earlier
# tests) that may start or end while this one counts.
_RELEASE_SCRIPT = """
import json, os, threading, torch
from qwq.engine.threads import release_openmp_workers

def threads():
    return len(os.listdir("/proc/self/task"))

got = {}

def work():
    before = threads()
    torch.randn(512, 512).sum(dim=1)  # a parallel region: this thread's team starts
    torch.ones(1 << 20).mul_(2)
    got["started"] = threads() - before
    got["released"] = release_openmp_workers()
    got["left"] = threads() - before

t = threading.Thread(target=work)
t.start()
t.join()
print(json.dumps({**got, "num_threads": torch.get_num_threads()}))
"""


@pytest.mark.skipif(torch.get_num_threads() < 2 or not os.path.isdir("/proc/self/task"),
                    reason="needs a parallel torch and /proc")
def test_a_thread_releases_its_openmp_workers():
    run = subprocess.run([sys.executable, "-c", _RELEASE_SCRIPT], capture_output=True,
                         text=True, timeout=300, check=False)
    assert run.returncode == 0, run.stderr[-2000:]
    got = json.loads(run.stdout.strip().splitlines()[-1])
    assert got["started"] == got["num_threads"] - 1
    assert got["released"] and got["left"] == 0
