"""Oversized prompts against the real demo model at its full 32K context: several 3 MB prompts
are refused while /health keeps answering, without tokenizing them whole, and the memory they
took goes back."""

import json
import random
import threading
import time

import httpx
import pytest
from test_server_support import served, start_stack

from qwq.benchmark import rss_mib
from qwq.config import EngineConfig

pytestmark = pytest.mark.slow


def _start():
    from qwq.models import load_engine
    engine, _, resolved = load_engine(None, engine_config=EngineConfig(
        max_model_len=32768, kv_cache_memory=400 << 20))  # 12 KiB a token: 34K tokens
    return start_stack(engine, model_name=resolved.name)


stack, _settled = served(_start, settle_timeout=60)


def big_text(chars: int) -> str:
    rng = random.Random(0)
    words = ["archive", "of", "the", "quokka", "museum", "holds", "42", "maps,", "and"]
    return " ".join(rng.choice(words) for _ in range(chars // 4))[:chars]


def health_latency(url: str) -> float:
    start = time.monotonic()
    assert httpx.get(url + "/health", timeout=30).status_code == 200
    return time.monotonic() - start


def test_3mb_prompts_are_refused_while_health_answers_and_memory_comes_back(stack):
    body = json.dumps({"prompt": big_text(3_000_000), "max_tokens": 1}).encode()
    answers = []

    def refused() -> None:
        r = httpx.post(stack.url + "/v1/completions", content=body, timeout=120,
                       headers={"Content-Type": "application/json"})
        answers.append((r.status_code, r.json()["error"]["param"], r.json()["error"]["code"]))

    refused()  # the first pays for one-time tables (token bytes, the plain-text tokenizer)
    idle = max(health_latency(stack.url) for _ in range(10))  # this machine's own noise
    baseline = rss_mib()
    worst = 0.0
    for _ in range(2):
        clients = [threading.Thread(target=refused) for _ in range(4)]
        for c in clients:
            c.start()
        while any(c.is_alive() for c in clients):
            worst = max(worst, health_latency(stack.url))
            time.sleep(0.02)
        for c in clients:
            c.join()
    print(f"/health worst {worst:.3f} s (idle worst {idle:.3f} s); RSS {baseline:.0f} -> "
          f"{rss_mib():.0f} MiB")
    assert answers == [(400, "prompt", "context_length_exceeded")] * 9
    assert worst < idle + 0.5  # was 1.5 s: the whole prompt tokenized holding the GIL
    assert rss_mib() < baseline + 64  # was ~500 MB more, and it stayed


def test_a_3mb_chat_message_is_refused_quickly(stack):
    start = time.monotonic()
    r = httpx.post(stack.url + "/v1/chat/completions", timeout=120, json={
        "messages": [{"role": "user", "content": big_text(3_000_000)}], "max_tokens": 1})
    assert r.status_code == 400 and r.json()["error"]["param"] == "messages"
    assert time.monotonic() - start < 10
