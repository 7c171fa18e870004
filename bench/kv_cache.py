"""What an 8-bit KV cache costs on the demo model, against the 16-bit cache, same weights:

  perplexity on qwq/data/ppl.txt (windows of 512, second halves scored, as bench/perplexity.py)
  greedy agreement: for each prompt, 512 greedy tokens; how many leading tokens are identical
  decode tok/s at batch 1, after a short prompt and after a long one (attention reads the cache)
  the cache's bytes per token, and the blocks that one kv_cache_memory budget holds

    python bench/kv_cache.py [--dtypes auto,int8,fp8] [--new 512] [--threads 2]

The model loads once; each cache dtype gets its own engine over the same network.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys

import torch

from qwq import SamplingParams
from qwq import benchmark as B
from qwq.config import EngineConfig
from qwq.model import KVCache
from qwq.model.kv_quant import kv_storage_dtype
from qwq.models import engine_for, num_kv_blocks

PROMPTS = [
    "Write a Python function that checks whether a string is a palindrome, with tests.",
    "How many positive integers below 1000 are divisible by 3 or 5? Think step by step.",
    "Explain how a hash map handles collisions, with an example in C.",
    "Implement quicksort in Rust and explain its worst case.",
]


def use_cache(llm, net, kv_cache_dtype: str) -> None:
    """Point llm at a fresh engine over net (its network) with this cache. quantize='none':
    the network is already in its weight format."""
    cfg = dataclasses.replace(llm.engine.config, kv_cache_dtype=kv_cache_dtype,
                              quantize="none")
    llm.engine = None  # the old cache goes before the next one is allocated
    llm.engine = engine_for(net, llm.tokenizer, cfg)


def leading_agreement(a: list[int], b: list[int]) -> int:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


def greedy_tokens(llm, new: int) -> list[list[int]]:
    ids = [llm.encode_chat([{"role": "user", "content": p}]) for p in PROMPTS]
    outs = llm.generate(ids, B.greedy(new))
    return [list(o.outputs[0].token_ids) for o in outs]


def measure(llm, net, dtype: str, chunks, long_ids, short_ids, new: int) -> dict:
    print(f"{dtype} ...", file=sys.stderr, flush=True)
    use_cache(llm, net, dtype)
    llm.generate([short_ids], SamplingParams(temperature=0, max_tokens=4))  # warm up
    runner = llm.engine.runner
    cfg, model_dtype = net.config, net.embed_tokens.weight.dtype
    per_block = KVCache.bytes_per_block(cfg.num_hidden_layers, runner.block_size,
                                        cfg.num_key_value_heads, cfg.head_dim,
                                        runner.kv.k.dtype)
    budget = EngineConfig(kv_cache_memory=1 << 30, kv_cache_dtype=dtype)
    return {
        "kv_bytes_per_token": per_block // runner.block_size,
        "blocks_in_1_gib": num_kv_blocks(cfg, budget, model_dtype, torch.device("cpu")),
        "ppl": B.qwq_ppl(llm, chunks),
        "decode_tok_s_short": B.qwq_decode(llm.engine, short_ids, 128),
        "decode_tok_s_long": B.qwq_decode(llm.engine, long_ids, 64),
        "tokens": greedy_tokens(llm, new),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dtypes", default="auto,int8,fp8")
    ap.add_argument("--new", type=int, default=512)
    ap.add_argument("--long", type=int, default=3000, help="prompt tokens of the long decode")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    llm = B.qwq_llm(None, kv_cache_memory=256 << 20)
    net = llm.engine.runner.model
    chunks = B.ppl_windows(llm.tokenizer, 512)
    short_ids, long_ids = (B.prompt_ids(llm.tokenizer, n) for n in (42, args.long))
    dtypes = args.dtypes.split(",")
    res = {d: measure(llm, net, d, chunks, long_ids, short_ids, args.new) for d in dtypes}
    base = res[dtypes[0]]
    for d in dtypes:
        r = res[d]
        r["storage"] = str(kv_storage_dtype(d, net.embed_tokens.weight.dtype))
        r["leading_agreement"] = [leading_agreement(a, b)
                                  for a, b in zip(base["tokens"], r.pop("tokens"))]
    for d in dtypes:
        r = res[d]
        print(f"{d:5s} {r['kv_bytes_per_token']:6d} B/token  {r['blocks_in_1_gib']:6d} blocks/GiB"
              f"  ppl {r['ppl']:.4f} ({r['ppl'] / base['ppl'] - 1:+.2%})"
              f"  decode {r['decode_tok_s_short']:.1f} / {r['decode_tok_s_long']:.1f} tok/s"
              f"  agreement {r['leading_agreement']} of {args.new}")
    print(json.dumps({"date": B.today(), "machine": B.machine(), "threads": args.threads,
                      "new": args.new, "long_prompt": args.long, "windows": len(chunks),
                      **res}))


if __name__ == "__main__":
    main()
