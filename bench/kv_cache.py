"""What an 8-bit KV cache costs on the demo model, against the 16-bit cache, same weights:

  ppl        perplexity on qwq/data/ppl.txt (windows of 512, second halves scored, as
             bench/perplexity.py)
  agreement  for each prompt, 512 greedy tokens; how many leading tokens equal the first
             dtype's (the 16-bit cache's)
  decode     tok/s at batch 1 after a 42-token prompt and after a long one (where attention
             reads much of the cache); the dtypes take turns each round, best round kept
  and always the cache's bytes per token and the blocks that 1 GiB holds

    python bench/kv_cache.py [--dtypes auto,int8,fp8] [--parts ppl,agreement,decode]
                             [--new 512] [--long 2000] [--rounds 3] [--threads 2]

The model loads once; each cache dtype gets its own engine over the same network.
"""

from __future__ import annotations

import argparse
import json
import sys

import torch

from qwq import benchmark as B
from qwq.config import EngineConfig
from qwq.model.kv_quant import kv_storage_dtype, row_bytes
from qwq.models import engine_for, num_kv_blocks

PROMPTS = [
    "Write a Python function that checks whether a string is a palindrome, with tests.",
    "How many positive integers below 1000 are divisible by 3 or 5? Think step by step.",
    "Explain how a hash map handles collisions, with an example in C.",
    "Implement quicksort in Rust and explain its worst case.",
]


def engine_with_cache(llm, kv_cache_dtype: str):
    """An engine over llm's network with this cache. quantize='none': the network is already
    in its weight format."""
    cfg = EngineConfig(kv_cache_memory=256 << 20, kv_cache_dtype=kv_cache_dtype,
                       quantize="none", enable_prefix_caching=False)
    return engine_for(llm.engine.runner.model, llm.tokenizer, cfg)


def leading_agreement(a: list[int], b: list[int]) -> int:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


def greedy_tokens(llm, new: int) -> list[list[int]]:
    ids = [llm.encode_chat([{"role": "user", "content": p}]) for p in PROMPTS]
    return [list(o.outputs[0].token_ids) for o in llm.generate(ids, B.greedy(new))]


def sizes(net, dtype: str) -> dict:
    cfg, model_dtype = net.config, net.dtype
    storage = kv_storage_dtype(dtype, model_dtype)
    budget = EngineConfig(kv_cache_memory=1 << 30, kv_cache_dtype=dtype)
    return {"storage": str(storage),
            "kv_bytes_per_token": 2 * cfg.num_hidden_layers * cfg.num_key_value_heads
            * row_bytes(cfg.head_dim, storage),
            "blocks_in_1_gib": num_kv_blocks(cfg, budget, model_dtype, torch.device("cpu"))}


def decode_rates(engines: dict, short_ids, long_ids, rounds: int) -> dict:
    best = {d: {"decode_tok_s_short": 0.0, "decode_tok_s_long": 0.0} for d in engines}
    for r in range(rounds):
        for d, engine in engines.items():
            print(f"decode round {r + 1}: {d}", file=sys.stderr, flush=True)
            for key, ids, new in (("decode_tok_s_short", short_ids, 128),
                                  ("decode_tok_s_long", long_ids, 64)):
                best[d][key] = max(best[d][key], B.qwq_decode(engine, ids, new, runs=1))
    return best


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dtypes", default="auto,int8,fp8")
    ap.add_argument("--parts", default="ppl,agreement,decode")
    ap.add_argument("--new", type=int, default=512)
    ap.add_argument("--long", type=int, default=2000, help="prompt tokens of the long decode")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    parts, dtypes = args.parts.split(","), args.dtypes.split(",")
    llm = B.qwq_llm(None, kv_cache_memory=16 << 20)
    net = llm.engine.runner.model
    engines = {d: engine_with_cache(llm, d) for d in dtypes}
    res = {d: sizes(net, d) for d in dtypes}
    chunks = B.ppl_windows(llm.tokenizer, 512)
    tokens = {}
    for d, engine in engines.items():
        llm.engine = engine
        if "ppl" in parts:
            print(f"ppl: {d}", file=sys.stderr, flush=True)
            res[d]["ppl"] = B.qwq_ppl(llm, chunks)
        if "agreement" in parts:
            print(f"agreement: {d}", file=sys.stderr, flush=True)
            tokens[d] = greedy_tokens(llm, args.new)
            res[d]["leading_agreement"] = [leading_agreement(a, b) for a, b in
                                           zip(tokens[dtypes[0]], tokens[d])]
    if "decode" in parts:
        short_ids, long_ids = (B.prompt_ids(llm.tokenizer, n) for n in (42, args.long))
        for d, rates in decode_rates(engines, short_ids, long_ids, args.rounds).items():
            res[d].update(rates)
    base = res[dtypes[0]]
    for d in dtypes:
        r = res[d]
        line = f"{d:5s} {r['kv_bytes_per_token']:6d} B/token {r['blocks_in_1_gib']:6d} blocks/GiB"
        if "ppl" in r:
            line += f"  ppl {r['ppl']:.4f} ({r['ppl'] / base['ppl'] - 1:+.2%})"
        if "leading_agreement" in r:
            line += f"  agreement {r['leading_agreement']} of {args.new}"
        if "decode_tok_s_short" in r:
            line += (f"  decode {r['decode_tok_s_short']:.1f} tok/s,"
                     f" {r['decode_tok_s_long']:.1f} after {args.long}")
        print(line)
    print(json.dumps({"date": B.today(), "machine": B.machine(), "threads": args.threads,
                      "new": args.new, "long_prompt": args.long, "windows": len(chunks),
                      "rounds": args.rounds, **res}))


if __name__ == "__main__":
    main()
