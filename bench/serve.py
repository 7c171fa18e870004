"""Serving benchmark: streaming chat requests at concurrency 1, 4, 16 against an
OpenAI-compatible server; time to first token, inter-token latency, output tokens/s.

    python bench/serve.py                          # qwq serve's app on the demo model, in-process
    python bench/serve.py --model path/or/name     # another model
    python bench/serve.py --url http://127.0.0.1:8080 --model-name x   # any running server
                                                    # (llama.cpp's llama-server, vLLM, ...)

Every request streams with stream_options.include_usage and ignore_eos, so each produces
exactly --max-tokens tokens where the server honours ignore_eos. Prompts are distinct, so the
prefix cache does not flatter the numbers (beyond the shared chat template head).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import os
import platform
import statistics
import time
from dataclasses import dataclass, field

import httpx

TOPICS = ["a lighthouse", "a lost key", "the first snow", "a clockmaker", "a small robot",
          "a river town", "an old map", "a night train", "a chess game", "a garden",
          "a violin", "a desert well", "a kite", "a library", "a storm", "a bakery"]


@dataclass
class Result:
    ttft: float
    itl: list[float] = field(default_factory=list)
    tokens: int = 0
    failed: bool = False


async def one_request(client: httpx.AsyncClient, url: str, model: str | None, i: int,
                      max_tokens: int, headers: dict) -> Result:
    body = {"messages": [{"role": "user", "content": f"Request {i}: tell a short story "
                          f"about {TOPICS[i % len(TOPICS)]}, in plain words."}],
            "max_tokens": max_tokens, "temperature": 0, "stream": True, "ignore_eos": True,
            "stream_options": {"include_usage": True}}
    if model:
        body["model"] = model
    start = time.perf_counter()
    last, result, chunks, tokens = None, None, 0, None
    async with client.stream("POST", url + "/v1/chat/completions", json=body,
                             headers=headers) as r:
        r.raise_for_status()
        async for line in r.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            event = json.loads(line[6:])
            if event.get("usage"):
                tokens = event["usage"]["completion_tokens"]
            if not any(c.get("delta", {}).get("content") for c in event.get("choices", [])):
                continue
            now = time.perf_counter()
            chunks += 1
            if result is None:
                result = Result(ttft=now - start)
            else:
                result.itl.append(now - last)
            last = now
    result = result or Result(ttft=time.perf_counter() - start)
    result.tokens = tokens if tokens is not None else chunks
    return result


async def level(url: str, model: str | None, concurrency: int, requests: int,
                max_tokens: int, headers: dict, offset: int) -> dict:
    limit = asyncio.Semaphore(concurrency)
    async with httpx.AsyncClient(timeout=600) as client:
        async def run(i: int) -> Result:
            async with limit:
                try:
                    return await one_request(client, url, model, offset + i, max_tokens,
                                             headers)
                except httpx.HTTPError as e:  # a server that drops requests under load
                    print(f"request {offset + i} failed: {e!r}", flush=True)
                    return Result(ttft=float("nan"), failed=True)

        start = time.perf_counter()
        results = await asyncio.gather(*(run(i) for i in range(requests)))
        wall = time.perf_counter() - start
    ok = [r for r in results if not r.failed]
    ttft = [r.ttft for r in ok] or [float("nan")]
    itl = [x for r in ok for x in r.itl]
    tokens = sum(r.tokens for r in ok)
    return {"concurrency": concurrency, "requests": requests, "failed": len(results) - len(ok),
            "wall_s": wall,
            "ttft_median_s": statistics.median(ttft), "ttft_p90_s": _p90(ttft),
            "itl_median_ms": 1000 * statistics.median(itl) if itl else None,
            "itl_p90_ms": 1000 * _p90(itl) if itl else None,
            "output_tokens": tokens, "output_tok_s": tokens / wall}


def _p90(xs: list[float]) -> float:
    return sorted(xs)[min(len(xs) - 1, int(0.9 * len(xs)))]


def machine() -> str:
    import torch
    return (f"{platform.machine()} {platform.processor() or ''} {os.cpu_count()} cores, "
            f"torch {torch.__version__} ({torch.get_num_threads()} threads), "
            f"python {platform.python_version()}").replace("  ", " ")


def start_local(args: argparse.Namespace):
    from qwq.config import EngineConfig
    from qwq.models import load_engine
    from qwq.server import ServerConfig, create_app
    from qwq.server.launch import BackgroundServer
    engine, _, resolved = load_engine(args.model, dtype=args.dtype,
                                      engine_config=EngineConfig(quantize=args.quantize))
    app = create_app(engine, ServerConfig(model_name=resolved.name))
    return BackgroundServer(app).start(), resolved.name


def table(rows: list[dict]) -> str:
    head = ("| concurrency | requests (failed) | TTFT median / p90 (s) | ITL median / p90 (ms) "
            "| output tok/s |")
    lines = [head, "| --- | --- | --- | --- | --- |"]
    for r in rows:
        itl = f"{r['itl_median_ms']:.0f} / {r['itl_p90_ms']:.0f}" if r["itl_median_ms"] \
            else "-"
        lines.append(f"| {r['concurrency']} | {r['requests']} ({r['failed']}) | "
                     f"{r['ttft_median_s']:.2f} / "
                     f"{r['ttft_p90_s']:.2f} | {itl} | {r['output_tok_s']:.1f} |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--url", help="a running OpenAI-compatible server (default: start qwq's)")
    p.add_argument("--model", default=None, help="model for the in-process server")
    p.add_argument("--model-name", default=None, help="`model` field sent with --url")
    p.add_argument("--dtype", default="auto")
    p.add_argument("--quantize", default="none", help="none, int8, int4 (in-process server)")
    p.add_argument("--api-key", default=os.environ.get("QWQ_API_KEY"))
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16])
    p.add_argument("--requests", type=int, default=None,
                   help="requests per level (default: 2 x concurrency, at least 4)")
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--json", default=None, help="also write the results here")
    args = p.parse_args()
    server, model = (None, args.model_name) if args.url else start_local(args)
    url = args.url or server.url
    headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}
    try:
        asyncio.run(level(url, model, 1, 1, 8, headers, 1000))  # warm up
        rows = []
        for c in args.concurrency:
            n = args.requests or max(4, 2 * c)
            rows.append(asyncio.run(level(url, model, c, n, args.max_tokens, headers,
                                          sum(r["requests"] for r in rows))))
            print(f"concurrency {c}: {rows[-1]}", flush=True)
    finally:
        if server is not None:
            server.stop()
    stamp = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
    print(f"\n{stamp} | {machine()} | server {url} model {model} | "
          f"max_tokens {args.max_tokens}\n\n{table(rows)}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"date": stamp, "machine": machine(), "url": url, "model": model,
                       "max_tokens": args.max_tokens, "results": rows}, f, indent=2)


if __name__ == "__main__":
    main()
