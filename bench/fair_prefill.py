"""Short requests beside a long prefill, through the server: the scheduler's prefill cap
(long_prefill_token_threshold) off and on, in the same run, on the same engine.

    cd bench && python fair_prefill.py                     # demo model, a 12K-token prompt
    python bench/fair_prefill.py --long-tokens 12000 --clients 4 --rounds 2 --json out.json

Each scenario: one streamed completion with a long prompt (token ids, --long-tokens) starts;
--clients closed-loop clients then send short streamed chat requests (max_tokens --short-tokens)
one after another until the long request has finished. Reported: the short requests' time to
first token (p50 / p99 over all of them), the long request's own time to its first token, and
the aggregate rate (prompt tokens computed + tokens generated, per second of the scenario).
Every scenario uses its own cache_salt, so no prefix-cache hit flatters a later one.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from pathlib import Path

import httpx

from qwq.benchmark import load_average, machine, prompt_ids, today


async def stream(client: httpx.AsyncClient, path: str, body: dict) -> tuple[float, dict]:
    """(seconds to the first streamed token, the usage) of one streamed request."""
    start, first, usage = time.perf_counter(), None, {}
    async with client.stream("POST", path, json={**body, "stream": True,
                                                 "stream_options": {"include_usage": True}}) as r:
        r.raise_for_status()
        async for line in r.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            event = json.loads(line[6:])
            usage = event.get("usage") or usage
            if first is None and any(c.get("text") or c.get("delta", {}).get("content")
                                     for c in event.get("choices", [])):
                first = time.perf_counter() - start
    return (first if first is not None else time.perf_counter() - start), usage


async def scenario(url: str, long_ids: list[int], args: argparse.Namespace, salt: str) -> dict:
    shorts: list[float] = []
    tokens = [0, 0]  # prompt tokens, generated tokens

    def count(usage: dict) -> None:
        tokens[0] += usage.get("prompt_tokens", 0) - usage.get(
            "prompt_tokens_details", {}).get("cached_tokens", 0)
        tokens[1] += usage.get("completion_tokens", 0)

    async with httpx.AsyncClient(base_url=url, timeout=600) as client:
        start = time.perf_counter()
        long = asyncio.create_task(stream(client, "/v1/completions", {
            "prompt": long_ids, "max_tokens": 16, "ignore_eos": True, "temperature": 0,
            "cache_salt": salt}))
        await asyncio.sleep(0.5)  # the long prefill is under way

        async def client_loop(k: int) -> None:
            i = 0
            while not long.done():
                ttft, usage = await stream(client, "/v1/chat/completions", {
                    "messages": [{"role": "user", "content": f"Client {k}, question {i}: "
                                  "name a colour."}],
                    "max_tokens": args.short_tokens, "ignore_eos": True, "temperature": 0,
                    "cache_salt": salt})
                shorts.append(ttft)
                count(usage)
                i += 1

        await asyncio.gather(*(client_loop(k) for k in range(args.clients)))
        long_ttft, usage = await long
        count(usage)
        wall = time.perf_counter() - start
    shorts.sort()
    return {"short_requests": len(shorts), "short_ttft_p50_s": statistics.median(shorts),
            "short_ttft_p99_s": shorts[min(len(shorts) - 1, int(0.99 * len(shorts)))],
            "long_ttft_s": long_ttft, "wall_s": wall, "prompt_tokens": tokens[0],
            "generated_tokens": tokens[1], "aggregate_tok_s": sum(tokens) / wall}


def start_server(args: argparse.Namespace):
    from qwq.config import EngineConfig
    from qwq.models import load_engine
    from qwq.server import ServerConfig, create_app
    from qwq.server.launch import BackgroundServer
    engine, _, resolved = load_engine(args.model, engine_config=EngineConfig(
        max_model_len=max(4096, args.long_tokens + 64)))
    server = BackgroundServer(create_app(engine, ServerConfig(model_name=resolved.name)))
    return engine, server.start()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=None, help="default: the demo model")
    p.add_argument("--long-tokens", type=int, default=12_000)
    p.add_argument("--short-tokens", type=int, default=16)
    p.add_argument("--clients", type=int, default=4)
    p.add_argument("--rounds", type=int, default=1, help="off/on pairs, alternated")
    p.add_argument("--json", default=None)
    args = p.parse_args()
    engine, server = start_server(args)
    long_ids = prompt_ids(engine.tokenizer, args.long_tokens)
    cfg = engine.scheduler.config  # the scheduler reads it every step
    budget = cfg.max_num_batched_tokens
    rows, load_before = [], load_average()
    try:
        asyncio.run(scenario(server.url, long_ids[:600], args, "warm-up"))
        for r in range(args.rounds):
            for threshold in (0, None):
                cfg.long_prefill_token_threshold = threshold
                label = "off" if threshold == 0 else f"on ({engine.scheduler.prefill_cap})"
                row = {"cap": label, **asyncio.run(scenario(server.url, long_ids, args,
                                                            f"round-{r}-{label}"))}
                rows.append(row)
                print(row, flush=True)
    finally:
        server.stop()
    print(f"\nfair_prefill  {today()}  {machine()}  load {load_before} -> {load_average()}")
    print(f"long prompt {args.long_tokens} tokens, {args.clients} short clients, step budget "
          f"{budget} tokens\n")
    print("| prefill cap | short requests | short TTFT p50 / p99 (s) | long TTFT (s) "
          "| aggregate tok/s |\n| --- | --- | --- | --- | --- |")
    for row in rows:
        print(f"| {row['cap']} | {row['short_requests']} | {row['short_ttft_p50_s']:.2f} / "
              f"{row['short_ttft_p99_s']:.2f} | {row['long_ttft_s']:.1f} | "
              f"{row['aggregate_tok_s']:.0f} |")
    if args.json:
        Path(args.json).write_text(json.dumps({"date": today(), "machine": machine(),
                                               "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
