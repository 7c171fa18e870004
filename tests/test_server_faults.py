"""Faults: clients that hang up, logits that turn NaN, a full queue, a dead engine, KV
exhaustion, tenants sharing a prefix, SIGTERM. The server keeps serving through all of them."""

import json
import os
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest
from test_server_support import served, start_stack, tiny_engine, tiny_model_dir

HI = [{"role": "user", "content": "Hi there"}]
LONG = {"max_tokens": 400, "ignore_eos": True, "temperature": 0}


stack, _settled = served(lambda: start_stack(api_keys=["key-a", "key-b"]))


def auth(key="key-a"):
    return {"Authorization": f"Bearer {key}"}


def events(lines):
    """The parsed `data:` payloads of an SSE body, [DONE] as the string."""
    for line in lines:
        if line.startswith("data: "):
            data = line[6:]
            yield data if data == "[DONE]" else json.loads(data)


def wait_for(cond, timeout=10.0):
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def disconnects(stack) -> float:
    text = httpx.get(stack.url + "/metrics", headers=auth()).text
    line = [x for x in text.splitlines() if 'outcome="disconnected"' in x and "_total" in x]
    return sum(float(x.split()[-1]) for x in line)


@pytest.fixture
def slow_steps(stack, monkeypatch):
    """Steps of at least 10 ms: a long answer surely outlasts the client that hangs up."""
    real = stack.engine.runner.execute
    monkeypatch.setattr(stack.engine.runner, "execute",
                        lambda *a: time.sleep(0.01) or real(*a))


def test_client_that_hangs_up_mid_stream_is_aborted_and_its_blocks_freed(stack, slow_steps):
    engine = stack.engine
    before = disconnects(stack)
    body = {"messages": HI, "stream": True, **LONG}
    with httpx.stream("POST", stack.url + "/v1/chat/completions", json=body, headers=auth(),
                      timeout=30) as r:
        got = []
        for event in events(r.iter_lines()):
            got.append(event)
            if len(got) == 3:
                break
        assert engine.has_unfinished() and engine.blocks.num_free < engine.blocks.num_blocks
    wait_for(lambda: not engine.has_unfinished())
    assert engine.blocks.num_free == engine.blocks.num_blocks
    wait_for(lambda: disconnects(stack) == before + 1)
    ok = stack.client().chat.completions.create(model="tiny", messages=HI, max_tokens=2)
    assert ok.usage.completion_tokens == 2


def test_client_that_hangs_up_before_a_whole_answer_is_aborted(stack, slow_steps):
    before = disconnects(stack)
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(stack.url + "/v1/chat/completions", headers=auth(), timeout=0.5,
                   json={"messages": HI, **LONG, "max_tokens": 450})
    wait_for(lambda: disconnects(stack) == before + 1)
    assert stack.engine.counters["generation_tokens"] > 0


@pytest.fixture
def poison(stack, monkeypatch):
    """Requests whose prompt says POISON get NaN logits from their third token on."""
    engine = stack.engine
    real = engine.add_request

    def nan_after_two(output_ids, logits):
        return logits.fill_(float("nan")) if len(output_ids) >= 2 else logits

    def add_request(prompt, params=None, request_id=None):
        if "POISON" in engine.tokenizer.decode(prompt):
            params.logits_processors = [nan_after_two]
        return real(prompt, params, request_id)

    monkeypatch.setattr(engine, "add_request", add_request)


def test_nan_logits_fail_their_request_alone(stack, poison):
    client = stack.client()
    bad = [{"role": "user", "content": "POISON"}]

    def healthy(i):
        return client.chat.completions.create(model="tiny", messages=HI, max_tokens=30,
                                              extra_body={"ignore_eos": True}).choices[0]

    with ThreadPoolExecutor(4) as pool:
        others = [pool.submit(healthy, i) for i in range(3)]
        body = {"messages": bad, "stream": True, "max_tokens": 30}
        with httpx.stream("POST", stack.url + "/v1/chat/completions", json=body,
                          headers=auth(), timeout=30) as r:
            got = list(events(r.iter_lines()))
        assert got[-1]["error"]["code"] == "generation_failed" and "NaN" in \
            got[-1]["error"]["message"]
        assert "[DONE]" not in got and any(e.get("choices") for e in got[:-1])
        assert all(f.result().finish_reason == "length" for f in others)
    with pytest.raises(openai.InternalServerError):
        client.chat.completions.create(model="tiny", messages=bad, max_tokens=30)
    with pytest.raises(openai.APIError, match="NaN"):
        list(client.chat.completions.create(model="tiny", messages=bad, max_tokens=30,
                                            stream=True))


def test_forced_preemption_gives_the_same_greedy_text():
    prompts = [[{"role": "user", "content": f"Story number {i}"}] for i in range(6)]
    ask = {"model": "tiny", "max_tokens": 40, "temperature": 0,
           "extra_body": {"ignore_eos": True}}
    roomy = start_stack(tiny_engine())
    tight = start_stack(tiny_engine(num_kv_blocks=48, enable_prefix_caching=False))
    try:
        alone = [roomy.client().chat.completions.create(messages=p, **ask)
                 .choices[0].message.content for p in prompts]
        with ThreadPoolExecutor(6) as pool:
            together = list(pool.map(lambda p: tight.client().chat.completions.create(
                messages=p, **ask).choices[0].message.content, prompts))
        assert tight.engine.counters["preemptions"] > 0
        assert together == alone
        tight.settled()
        roomy.settled()
    finally:
        roomy.close()
        tight.close()


def test_full_queue_is_429_with_retry_after():
    s = start_stack(tiny_engine(max_num_seqs=1, max_waiting=1))
    real = s.engine.runner.execute
    s.engine.runner.execute = lambda *a: time.sleep(0.02) or real(*a)  # slow steps
    try:
        body = {"messages": HI, "stream": True, **LONG}
        with httpx.stream("POST", s.url + "/v1/chat/completions", json=body, timeout=30) as r:
            lines = r.iter_lines()
            next(events(lines))  # the first request runs
            waiter = threading.Thread(target=lambda: httpx.post(
                s.url + "/v1/chat/completions", timeout=60,
                json={"messages": HI, "max_tokens": 2}))
            waiter.start()
            wait_for(lambda: s.engine.stats()["waiting"] == 1)  # the second waits
            full = httpx.post(s.url + "/v1/chat/completions", timeout=30,
                              json={"messages": HI, "max_tokens": 2})
            assert full.status_code == 429 and full.headers["retry-after"] == "1"
            assert full.json()["error"]["code"] == "queue_full"
            with pytest.raises(openai.RateLimitError):
                s.client().completions.create(model="tiny", prompt="x", max_tokens=1)
        waiter.join(timeout=60)
        s.settled()
    finally:
        s.close()


def test_a_dead_engine_answers_503_with_retry_after():
    s = start_stack()
    try:
        def broken(*args, **kw):
            raise RuntimeError("simulated device failure")

        s.engine.runner.execute = broken
        r = httpx.post(s.url + "/v1/chat/completions", json={"messages": HI}, timeout=30)
        assert r.status_code == 503 and r.headers["retry-after"] == "1"
        assert httpx.get(s.url + "/health").status_code == 503
        again = httpx.post(s.url + "/v1/completions", json={"prompt": "x"}, timeout=30)
        assert again.status_code == 503 and again.json()["error"]["code"] == "engine_dead"
    finally:
        s.close()


def test_prefix_cache_hits_never_cross_tenants(stack):
    system = {"role": "system", "content": "Quokkas keep archives. " * 20}
    msgs = [system, {"role": "user", "content": "Catalogue this."}]

    def cached(key, **extra):
        r = stack.client(api_key=key).chat.completions.create(
            model="tiny", messages=msgs, max_tokens=1, extra_body=extra)
        return r.usage.prompt_tokens_details.cached_tokens

    assert cached("key-a") == 0
    assert cached("key-a") > 100  # same tenant: the shared prefix is reused
    assert cached("key-b") == 0  # another key never sees key-a's blocks
    assert cached("key-a", cache_salt="request-salt") == 0  # nor another salt
    assert cached("key-a", cache_salt="request-salt") > 100


def test_sigterm_drains_in_flight_requests(tmp_path):
    port = _free_port()
    cmd = [sys.executable, "-m", "qwq.cli", "serve", "--model", str(tiny_model_dir()),
           "--dtype", "float32", "--device", "cpu", "--max-model-len", "512",
           "--port", str(port)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: _healthy(url), timeout=120)
        body = {"messages": HI, "stream": True, "max_tokens": 60, "ignore_eos": True,
                "temperature": 0}
        with httpx.stream("POST", url + "/v1/chat/completions", json=body, timeout=60) as r:
            lines = r.iter_lines()
            first = next(events(lines))
            proc.send_signal(signal.SIGTERM)
            rest = list(events(lines))
        assert first["choices"] and rest[-1] == "[DONE]"
        assert rest[-2]["choices"][0]["finish_reason"] == "length"
        # uvicorn exits by re-raising the signal once shut down: killed by SIGTERM, cleanly
        assert proc.wait(timeout=60) in (0, -signal.SIGTERM)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
    log = proc.stdout.read().decode()
    assert "Finished server process" in log  # a clean shutdown, after the stream completed


def _free_port() -> int:
    import socket
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _healthy(url: str) -> bool:
    try:
        return httpx.get(url + "/health", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False
