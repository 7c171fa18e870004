"""Greedy tokens of qwq against llama.cpp's on the same GGUF: where each prompt's answers part.

    python bench/greedy_agreement.py [--model F] [--tokens 64] [--dtype bfloat16 float32]
                                     [--kv-cache-dtype auto]

Twelve ordinary chat prompts (the first six are the test's,
tests/test_gguf_native.py::test_greedy_tokens_follow_llama_cpp_on_the_same_file). llama-server
answers them greedily (stopping at the end of the answer, as qwq does); qwq computes the file as
shipped (quantize="gguf") in each activation dtype asked. For each prompt: "same" over the whole
answer, or the token index where the two part and how far llama.cpp's token is below qwq's first
choice in the step that chose it (nats): a near-tie flips on any rounding difference.
"""

from __future__ import annotations

import argparse
import json

from qwq import LLM, SamplingParams
from qwq.benchmark import llama_cpp
from qwq.benchmark.machine import cpu_model, today
from qwq.benchmark.qwq_runs import parting
from qwq.models import load_tokenizer, resolve

PROMPTS = ["Name three prime numbers.", "What is the capital of France?",
           "Write a haiku about the sea.", "Explain what a hash table is in two sentences.",
           "How do I reverse a list in Python?", "Give me a tip for sleeping better.",
           "What is 17 times 23?", "Describe a cat in one sentence.", "Why is the sky blue?",
           "List four colors of the rainbow.", "What does HTTP stand for?",
           "Tell me a short joke."]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=None, help="a .gguf (default: the demo model)")
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--dtype", nargs="+", default=["bfloat16", "float32"])
    ap.add_argument("--kv-cache-dtype", default="auto")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    path = str(resolve(args.model).path)
    tok = load_tokenizer(args.model)[0]
    prompts = [tok.encode_chat([{"role": "user", "content": p}]) for p in PROMPTS]
    with llama_cpp.server(path, threads=args.threads) as url:
        theirs = [llama_cpp.greedy_ids(url, ids, args.tokens, ignore_eos=False) for ids in prompts]
    res = {"date": today(), "cpu": cpu_model(), "model": path, "tokens": args.tokens}
    for dtype in args.dtype:
        llm = LLM(args.model, dtype=dtype, quantize="gguf", enable_prefix_caching=False,
                  kv_cache_dtype=args.kv_cache_dtype)
        ends = set(llm.engine.eos_ids)
        # the decode's own top-20 at each step: where the answers part, how far llama.cpp's
        # token was below qwq's pick in the very step that picked it
        params = SamplingParams(temperature=0, max_tokens=args.tokens, loop_control="off",
                                logprobs=20)
        outs = [o.outputs[0] for o in llm.generate(prompts, params)]
        rows = []
        for out, y in zip(outs, theirs, strict=True):
            x = [t for t in out.token_ids if t not in ends]
            y = [t for t in y if t not in ends]
            part = parting(x, y, out.logprobs)
            if part is None:
                rows.append("same" if len(x) == len(y) else f"one stopped at {min(len(x), len(y))}")
                continue
            at, gap = part
            rows.append({"parts_at": at, "gap_nats": "outside the top 20" if gap is None else gap})
        res[dtype] = {"same": sum(r == "same" for r in rows), "of": len(rows), "prompts": rows}
        del llm
    print(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
