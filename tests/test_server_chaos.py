"""`qwq serve` as operators run it, in a child process on loopback: a KV cache shrunk with
--num-kv-blocks forces preemption under concurrent streams (some clients hanging up) and every
greedy answer stays the same; SIGTERM keeps answering 503 (and /health 503) while the open
streams finish, then the process exits."""

import json
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
from test_server_support import tiny_model_dir


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def healthy(url: str) -> bool:
    try:
        return httpx.get(url + "/health", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


class Served:
    """`qwq serve --model <tiny> ARGS` on a free port, until close()."""

    def __init__(self, *args: str):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        cmd = [sys.executable, "-m", "qwq.cli", "serve", "--model", str(tiny_model_dir()),
               "--dtype", "float32", "--device", "cpu", "--port", str(self.port), *args]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     env={**os.environ, "PYTHONUNBUFFERED": "1"})
        deadline = time.monotonic() + 120
        while not healthy(self.url):
            assert self.proc.poll() is None, self.proc.stdout.read().decode()
            assert time.monotonic() < deadline, "the server did not start"
            time.sleep(0.1)

    def metrics(self) -> dict[str, float]:
        out = {}
        for line in httpx.get(self.url + "/metrics", timeout=30).text.splitlines():
            if line and not line.startswith("#") and "{" not in line:
                name, value = line.rsplit(" ", 1)
                out[name] = float(value)
        return out

    def close(self) -> str:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        return self.proc.stdout.read().decode()


def stream_text(url: str, prompt: str, max_tokens: int,
                hang_up_after: int | None = None) -> str | None:
    """The streamed greedy answer; with hang_up_after, the client leaves after that many
    chunks (returns None)."""
    body = {"messages": [{"role": "user", "content": prompt}], "max_tokens": max_tokens,
            "temperature": 0, "ignore_eos": True, "stream": True}
    text, chunks = "", 0
    with httpx.stream("POST", url + "/v1/chat/completions", json=body, timeout=300) as r:
        assert r.status_code == 200, r.read()
        for line in r.iter_lines():
            if not line.startswith("data: {"):
                continue
            event = json.loads(line[6:])
            text += event["choices"][0]["delta"].get("content") or ""
            chunks += 1
            if hang_up_after is not None and chunks >= hang_up_after:
                return None
    return text


def test_a_small_kv_cache_preempts_under_concurrent_streams_and_keeps_greedy_text():
    # 40 blocks of 16 tokens (8 KiB each for this model: 2 layers x K,V x 2 heads x 16 dims
    # x 16 tokens x 4 bytes): 640 tokens of KV for 12 streams needing ~100 each
    server = Served("--max-model-len", "512", "--kv-cache-memory", "320KiB")
    try:
        prompts = [f"Story number {i} about a lighthouse" for i in range(12)]
        solo = [stream_text(server.url, p, 64) for p in prompts]  # one at a time: they fit
        m = server.metrics()
        assert m["qwq_kv_cache_blocks"] == 40 and m["qwq_preemptions_total"] == 0
        rng = random.Random(0)
        leavers = set(rng.sample(range(12), 3))
        with ThreadPoolExecutor(12) as pool:
            together = list(pool.map(
                lambda i: stream_text(server.url, prompts[i], 64,
                                      rng.randrange(2, 20) if i in leavers else None),
                range(12)))
        m = server.metrics()
        assert m["qwq_preemptions_total"] > 0
        assert [t for i, t in enumerate(together) if i not in leavers] == \
            [t for i, t in enumerate(solo) if i not in leavers]
        deadline = time.monotonic() + 30  # the leavers' requests are aborted, blocks freed
        while (m["qwq_requests_running"] or m["qwq_kv_cache_free_blocks"] != 40):
            assert time.monotonic() < deadline, m
            time.sleep(0.1)
            m = server.metrics()
        assert stream_text(server.url, prompts[0], 64) == solo[0]  # the same after the load
    finally:
        server.close()


def test_sigterm_answers_503_while_draining_then_exits():
    server = Served("--max-model-len", "1024", "--drain-timeout", "60",
                    "--kv-cache-memory", "64MiB")
    url, got, probes = server.url, {}, []
    try:
        def long_stream():
            got["text"] = stream_text(url, "Tell me everything", 900)

        worker = threading.Thread(target=long_stream)
        worker.start()
        while not server.metrics()["qwq_requests_running"]:
            assert worker.is_alive()
            time.sleep(0.02)
        server.proc.send_signal(signal.SIGTERM)
        while worker.is_alive():  # new connections each time: the socket is still open
            try:
                health = httpx.get(url + "/health", timeout=30)
                chat = httpx.post(url + "/v1/chat/completions", timeout=30, json={
                    "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2})
            except httpx.ConnectError:  # refused only once the stream has ended (drain done)
                worker.join(timeout=30)
                assert not worker.is_alive(), "the server closed its socket mid-stream"
                break
            probes.append((health.status_code, health.headers.get("retry-after"),
                           chat.status_code, chat.headers.get("retry-after"),
                           chat.json()["error"]["code"]))
            time.sleep(0.05)
        worker.join()
        assert server.proc.wait(timeout=60) in (0, -signal.SIGTERM)
    finally:
        log = server.close()
    assert len(got["text"]) > 0  # the open stream finished
    assert len(probes) >= 3 and set(probes) == {(503, "1", 503, "1", "draining")}, probes
    assert "Finished server process" in log
