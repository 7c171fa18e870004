"""Serving benchmark: `qwq serve` against llama.cpp's llama-server on the same GGUF, threads
and machine, in one run.

    python bench/serve.py                                  # the demo model, everything below
    python bench/serve.py --concurrency 1 4 --max-tokens 64 --rounds 2 --json out.json
    python bench/serve.py --systems qwq                    # without the peer

1. One streamed request against the engine offline: qwq.LLM's decode rate in this process
   and the same request streamed through `qwq serve`, alternated `--rounds` times.
2. Streaming chat at each concurrency (1, 4, 16, 64 by default): time to first token and
   inter-token latency (p50, p99), aggregate output tok/s; llama-server gets as many slots
   (-np) as there are streams.
3. Short requests arriving while long ones run (a long prompt being prefilled, streams
   decoding): their time to first token, against the same request on the idle server.

Both servers run as child processes on 127.0.0.1, one at a time (the other is not started
or idle). Every request is greedy with ignore_eos (and min_tokens), so each produces exactly
--max-tokens tokens, and qwq decodes with loop_control off (every token one forward, as in
its peer). ITL is the gap between streamed chunks (vLLM's benchmark_serving rule).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import statistics
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from qwq.benchmark import llama_cpp, load_average, machine, today
from qwq.procs import free_port, http_server

TOPICS = ["a lighthouse", "a lost key", "the first snow", "a clockmaker", "a small robot",
          "a river town", "an old map", "a night train", "a chess game", "a garden",
          "a violin", "a desert well", "a kite", "a library", "a storm", "a bakery"]


@dataclass
class Result:
    ttft: float = float("nan")
    gaps: list[float] = field(default_factory=list)  # between content chunks
    tokens: int = 0
    decode_s: float = 0.0  # first content chunk to last
    failed: bool = False


def messages(i: int) -> list[dict]:
    return [{"role": "user", "content": f"Request {i}: tell a short story about "
             f"{TOPICS[i % len(TOPICS)]}, in plain words."}]


def body(msgs: list[dict], max_tokens: int) -> dict:
    return {"messages": msgs, "max_tokens": max_tokens, "min_tokens": max_tokens,
            "temperature": 0, "ignore_eos": True, "loop_control": "off", "stream": True,
            "stream_options": {"include_usage": True}}


async def stream(client: httpx.AsyncClient, url: str, payload: dict) -> Result:
    res, start, last = Result(), time.perf_counter(), None
    async with client.stream("POST", url + "/v1/chat/completions", json=payload) as r:
        r.raise_for_status()
        async for line in r.aiter_lines():
            if not line.startswith("data: {"):
                continue
            event = json.loads(line[6:])
            if event.get("usage"):
                res.tokens = event["usage"]["completion_tokens"]
            if not any(c.get("delta", {}).get("content") for c in event.get("choices", [])):
                continue
            now = time.perf_counter()
            if last is None:
                res.ttft, first = now - start, now
            else:
                res.gaps.append(now - last)
            last = now
    if last is not None:
        res.decode_s = last - first
    return res


async def run_level(url: str, concurrency: int, requests: int, max_tokens: int,
                    offset: int) -> dict:
    limit = asyncio.Semaphore(concurrency)
    async with httpx.AsyncClient(timeout=httpx.Timeout(1800, connect=30),
                                 limits=httpx.Limits(max_connections=concurrency + 4)) as c:
        async def one(i: int) -> Result:
            async with limit:
                try:
                    return await stream(c, url, body(messages(offset + i), max_tokens))
                except httpx.HTTPError as e:
                    print(f"  request {offset + i} failed: {e!r}", flush=True)
                    return Result(failed=True)

        start = time.perf_counter()
        results = await asyncio.gather(*(one(i) for i in range(requests)))
        wall = time.perf_counter() - start
    return summarize(results, wall, concurrency)


def pct(xs: list[float], q: float) -> float:
    if not xs:
        return float("nan")
    xs = sorted(xs)
    return xs[min(len(xs) - 1, round(q * (len(xs) - 1)))]


def summarize(results: list[Result], wall: float, concurrency: int) -> dict:
    ok = [r for r in results if not r.failed]
    ttft = [r.ttft for r in ok]
    gaps = [g for r in ok for g in r.gaps]
    tokens = sum(r.tokens for r in ok)
    return {"concurrency": concurrency, "requests": len(results),
            "failed": len(results) - len(ok), "wall_s": round(wall, 2),
            "ttft_p50_s": pct(ttft, 0.5), "ttft_p99_s": pct(ttft, 0.99),
            "itl_p50_ms": 1000 * pct(gaps, 0.5), "itl_p99_ms": 1000 * pct(gaps, 0.99),
            "output_tokens": tokens, "output_tok_s": tokens / wall}


# -- the servers ------------------------------------------------------------------------------
@contextlib.contextmanager
def qwq_server(model: str | None, extra: list[str]) -> Iterator[str]:
    """`qwq serve` in a child process, as people run it; yields its URL."""
    port = free_port()
    cmd = [sys.executable, "-m", "qwq.cli", "serve", "--port", str(port)] \
        + (["--model", model] if model else []) + extra
    with http_server("qwq serve", cmd, port, timeout=600) as url:
        yield url


def warm(url: str) -> None:
    asyncio.run(run_level(url, 1, 1, 8, 1000))


# -- 1. one stream against the engine offline ------------------------------------------------
def offline_vs_stream(url: str, llm, max_tokens: int, rounds: int) -> dict:
    from qwq.benchmark.qwq_runs import qwq_decode
    msgs = messages(0)
    ids = llm.encode_chat(msgs)
    offline, streamed = [], []
    for _ in range(rounds):  # alternated, so drift in the machine's load hits both
        offline.append(qwq_decode(llm.engine, ids, max_tokens, runs=1))
        r = asyncio.run(_one_stream(url, body(msgs, max_tokens)))
        streamed.append((r.tokens - 1) / r.decode_s)
        print(f"  offline {offline[-1]:.1f} tok/s, streamed {streamed[-1]:.1f} tok/s",
              flush=True)
    return {"offline_tok_s": offline, "stream_tok_s": streamed,
            "ratio_median": statistics.median(s / o for s, o in zip(streamed, offline)),
            "ratio_best": max(streamed) / max(offline)}


async def _one_stream(url: str, payload: dict) -> Result:
    async with httpx.AsyncClient(timeout=1800) as c:
        return await stream(c, url, payload)


# -- 3. short requests while long ones run ---------------------------------------------------
async def short_under_load(url: str, long_streams: int, long_prompt_words: int,
                           shorts: int) -> dict:
    """TTFT of short requests alone, then while long_streams streams decode and a prompt of
    long_prompt_words words is prefilled."""
    short = body([{"role": "user", "content": "Say hi."}], 8)
    async with httpx.AsyncClient(timeout=1800) as c:
        idle = [(await stream(c, url, short)).ttft for _ in range(shorts)]
        long_body = body(messages(7), 256)
        prompt = " ".join(TOPICS[i % len(TOPICS)].split()[-1] for i in range(long_prompt_words))
        big = body([{"role": "user", "content": f"Summarise: {prompt}"}], 16)
        background = [asyncio.create_task(stream(c, url, long_body))
                      for _ in range(long_streams)]
        await asyncio.sleep(2.0)  # the long streams are decoding
        prefill = asyncio.create_task(stream(c, url, big))
        await asyncio.sleep(0.2)  # its prefill has begun
        loaded = []
        for _ in range(shorts):
            loaded.append((await stream(c, url, short)).ttft)
        long_prompt_ttft = (await prefill).ttft
        await asyncio.gather(*background)
    return {"idle_ttft_p50_s": pct(idle, 0.5), "loaded_ttft_p50_s": pct(loaded, 0.5),
            "loaded_ttft_max_s": max(loaded), "long_prompt_ttft_s": long_prompt_ttft}


# -- the run ------------------------------------------------------------------------------------
def measure_levels(url: str, levels: list[int], max_tokens: int, requests: int | None,
                   name: str) -> list[dict]:
    rows = []
    for c in levels:
        n = requests or max(c, 8)
        rows.append({"system": name, **asyncio.run(run_level(url, c, n, max_tokens, 100 * c))})
        print(f"  {name} x{c}: {rows[-1]}", flush=True)
    return rows


def table(rows: list[dict]) -> str:
    head = ("| server | streams | requests (failed) | TTFT p50 / p99 (s) | ITL p50 / p99 (ms) "
            "| output tok/s |")
    lines = [head, "| --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        lines.append(f"| {r['system']} | {r['concurrency']} | {r['requests']} ({r['failed']}) "
                     f"| {r['ttft_p50_s']:.2f} / {r['ttft_p99_s']:.2f} "
                     f"| {r['itl_p50_ms']:.0f} / {r['itl_p99_ms']:.0f} "
                     f"| {r['output_tok_s']:.1f} |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=None, help="a GGUF both servers load (default: demo)")
    p.add_argument("--systems", default="qwq,llama.cpp")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 2)
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16, 64])
    p.add_argument("--requests", type=int, default=None,
                   help="requests per level (default: the concurrency, at least 8)")
    p.add_argument("--max-tokens", type=int, default=128)
    p.add_argument("--rounds", type=int, default=3, help="offline/stream alternations")
    p.add_argument("--parts", default="offline,levels,short")
    p.add_argument("--json", default=None)
    args = p.parse_args()
    from qwq.models import resolve
    model = str(resolve(args.model).path)
    systems, parts = args.systems.split(","), args.parts.split(",")
    out = {"date": today(), "machine": machine(), "load_before": load_average(),
           "command": " ".join([Path(sys.argv[0]).name] + sys.argv[1:]),
           "threads": args.threads, "max_tokens": args.max_tokens, "levels": []}
    if "qwq" in systems:
        run_qwq(model, args, parts, out)
    if "llama.cpp" in systems:
        run_llama(model, args, parts, out)
    out["load_after"] = load_average()
    report(out)
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2))


def run_qwq(model: str, args: argparse.Namespace, parts: list[str], out: dict) -> None:
    with qwq_server(model, []) as url:
        warm(url)
        if "offline" in parts:
            from qwq import LLM
            llm = LLM(model, enable_prefix_caching=False)
            print("1. one stream against qwq.LLM offline", flush=True)
            out["offline"] = offline_vs_stream(url, llm, args.max_tokens, args.rounds)
            del llm
        if "levels" in parts:
            print("2. concurrency levels", flush=True)
            out["levels"] += measure_levels(url, args.concurrency, args.max_tokens,
                                            args.requests, "qwq serve")
        if "short" in parts:
            print("3. short requests under load", flush=True)
            out["short_qwq"] = asyncio.run(short_under_load(url, 4, 1500, 4))
            print(f"  {out['short_qwq']}", flush=True)


def run_llama(model: str, args: argparse.Namespace, parts: list[str], out: dict) -> None:
    if "levels" in parts:
        for c in args.concurrency:  # as many slots as streams
            with llama_cpp.server(model, args.threads, slots=c, ctx=1024) as url:
                warm(url)
                out["levels"] += measure_levels(url, [c], args.max_tokens, args.requests,
                                                f"llama-server -np {c}")
    if "short" in parts:
        with llama_cpp.server(model, args.threads, slots=6, ctx=4096) as url:
            warm(url)
            out["short_llama"] = asyncio.run(short_under_load(url, 4, 1500, 4))
            print(f"  llama-server: {out['short_llama']}", flush=True)


def report(out: dict) -> None:
    print(f"\n{out['date']} | {out['machine']} | load {out['load_before']} -> "
          f"{out['load_after']} | {out['command']}")
    if "offline" in out:
        o = out["offline"]
        print(f"one stream / offline: median {o['ratio_median']:.2f}, best-of "
              f"{o['ratio_best']:.2f} (offline {max(o['offline_tok_s']):.1f} tok/s, "
              f"streamed {max(o['stream_tok_s']):.1f})")
    if out["levels"]:
        print(table(sorted(out["levels"], key=lambda r: (r["concurrency"], r["system"]))))
    for key in ("short_qwq", "short_llama"):
        if key in out:
            print(key, out[key])


if __name__ == "__main__":
    main()
