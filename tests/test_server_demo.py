"""Load on the real demo model through the server: 32 concurrent streams each equal their solo
greedy text; a second wave sharing a long system prompt hits the prefix cache, which shows in
/metrics and in a lower time to first token."""

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from test_server_support import served, start_stack

from qwq.config import EngineConfig

pytestmark = pytest.mark.slow

QUESTIONS = ["What is 2+2?", "Name a color.", "Say hi in French.", "What is Python?",
             "Capital of Japan?", "List two fruits.", "What is 3*7?", "Spell 'cat'."]


def _start():
    from qwq.models import load_engine
    engine, _, resolved = load_engine(None, engine_config=EngineConfig(max_model_len=4096))
    s = start_stack(engine, model_name=resolved.name)
    return s


stack, _settled = served(_start, settle_timeout=60)


def streamed(client, messages, **kw):
    """(text, seconds to the first token, usage) of one streamed chat answer."""
    start, first, text, usage = time.monotonic(), None, "", None
    for chunk in client.chat.completions.create(
            model="qwq-demo", messages=messages, stream=True,
            stream_options={"include_usage": True}, **kw):
        if chunk.usage:
            usage = chunk.usage
        for choice in chunk.choices:
            if choice.delta.content and first is None:
                first = time.monotonic() - start
            text += choice.delta.content or ""
    return text, first, usage


def test_32_concurrent_streams_each_equal_their_solo_greedy_text(stack):
    """Batching does not change a greedy answer: every token is computed by the same kernels
    whatever shares its step (decodes beside prefills included). The prompts go through once
    first, so the solo and the concurrent answers both start from the same prefix-cache hits (a
    prompt computed whole or from cached blocks is a different sum, and can round differently:
    that is prefix caching, not batching)."""
    client = stack.client()
    ask = {"max_tokens": 8, "temperature": 0}

    def user(q):
        return [{"role": "user", "content": q}]

    for q in QUESTIONS:
        client.chat.completions.create(model="qwq-demo", messages=user(q), max_tokens=1)
    solo = {q: client.chat.completions.create(model="qwq-demo", messages=user(q), **ask)
            .choices[0].message.content for q in QUESTIONS}
    peak = [0]
    done = threading.Event()

    def watch():
        while not done.is_set():
            peak[0] = max(peak[0], stack.engine.stats()["running"])
            time.sleep(0.005)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        with ThreadPoolExecutor(32) as pool:
            got = list(pool.map(lambda q: streamed(client, user(q), **ask)[0], QUESTIONS * 4))
    finally:
        done.set()
        watcher.join()
    assert got == [solo[q] for q in QUESTIONS * 4]
    assert peak[0] >= 16  # they really ran together


def _prefix_counts(stack) -> tuple[float, float, float]:
    """(hit rate, hit tokens, queried tokens) from /metrics."""
    values = {}
    for line in httpx.get(stack.url + "/metrics").text.splitlines():
        name, _, value = line.partition(" ")
        values[name] = value
    return (float(values["qwq_prefix_cache_hit_rate"]),
            float(values["qwq_prefix_cache_hit_tokens_total"]),
            float(values["qwq_prefix_cache_queried_tokens_total"]))


def test_second_wave_sharing_a_system_prompt_hits_the_prefix_cache(stack):
    system = {"role": "system", "content": "You are the archivist of the Quokka Museum. " * 40}
    client = stack.client()

    def wave(questions):
        """(mean time to first token, hit rate of this wave's prompt tokens)"""
        _, hits, queried = _prefix_counts(stack)
        with ThreadPoolExecutor(len(questions)) as pool:
            got = list(pool.map(lambda q: streamed(
                client, [system, {"role": "user", "content": q}], max_tokens=4,
                temperature=0), questions))
        rate, hits_after, queried_after = _prefix_counts(stack)
        assert 0 < rate <= 1
        return (sum(t for _, t, _ in got) / len(got),
                (hits_after - hits) / (queried_after - queried), got)

    ttft_first, rate_first, _ = wave(QUESTIONS[:4])
    ttft_second, rate_second, second = wave(QUESTIONS[4:])
    # the first wave hits only what its own first request left (it runs a step ahead)
    assert rate_second > 0.9 and rate_second > rate_first, (rate_first, rate_second)
    cached = [usage.prompt_tokens_details.cached_tokens for _, _, usage in second]
    assert min(cached) >= 400, cached
    assert ttft_second < 0.5 * ttft_first, (ttft_first, ttft_second)
