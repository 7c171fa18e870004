"""Speculative decoding: decode tok/s without and with drafts (same model, same process,
greedy, best of N alternating runs), the acceptance rate, and a check that the tokens are
identical.

Prompt lookup, on reasoning-style outputs that quote their prompt:

    python bench/speculative.py [--k 4] [--tokens 128] [--quantize auto] [--runs 2] [--json]

A draft model (speculative_model=): the issue's self-draft is the demo model in bfloat16 as
the target and its quantized GGUF, as shipped, as the draft:

    python bench/speculative.py --draft qwq-demo --quantize none --k 4
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from qwq.benchmark import load_average, machine, today

CODE = '''def merge_sort(items):
    if len(items) <= 1:
        return items
    middle = len(items) // 2
    left = merge_sort(items[:middle])
    right = merge_sort(items[middle:])
    merged = []
    i = j = 0
    while i < len(left) and j < len(right):
        if left[i] <= right[j]:
            merged.append(left[i])
            i += 1
        else:
            merged.append(right[j])
            j += 1
    merged.extend(left[i:])
    merged.extend(right[j:])
    return merged
'''
TEXT = ("The Rhine is a river that begins in the Swiss Alps, forms part of the border between "
        "Switzerland and Liechtenstein, Switzerland and Austria, and Switzerland and Germany, "
        "and then flows through Germany and the Netherlands to the North Sea. It is about "
        "1,230 kilometres long. Its largest cities are Cologne, Rotterdam and Düsseldorf. The "
        "river has been a vital navigable waterway since Roman times, carrying goods deep "
        "inland, and many castles stand on its banks in the Middle Rhine gorge.")
PROBLEM = ("A train leaves Lyon at 9:40 and travels 312 km at an average speed of 104 km/h. "
           "A second train leaves Paris at 10:05 and travels 390 km at 130 km/h. Which train "
           "arrives first, and by how many minutes?")

TASKS = {
    "edit code": f"Repeat this code with one change: rename `merged` to `result`. Output the "
                 f"whole code.\n\n```python\n{CODE}```",
    "summarise": f"Summarise this text, quoting its key facts exactly:\n\n{TEXT}",
    "re-read": f"{PROBLEM}\n\nSolve it step by step. Before each step, restate the relevant "
               f"part of the problem word for word.",
}


def decode(llm, ids, params, k: int, draft_model: bool) -> tuple[float, list[int], int, int]:
    """k drafts a step, from the draft model when the engine has one, else by prompt lookup
    (k=0: the model alone)."""
    eng = llm.engine
    if draft_model:
        eng.config.num_speculative_tokens = k
    else:
        eng.config.speculative_ngram = k
    before = dict(eng.counters)
    t = time.perf_counter()
    out = llm.generate([ids], params)[0].outputs[0]
    dt = time.perf_counter() - t
    drafted = eng.counters["draft_tokens"] - before["draft_tokens"]
    accepted = eng.counters["accepted_draft_tokens"] - before["accepted_draft_tokens"]
    return len(out.token_ids) / dt, out.token_ids, drafted, accepted


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--k", type=int, default=4, help="draft tokens per step")
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--quantize", default="auto", help="the target's format")
    ap.add_argument("--draft", default=None,
                    help="a draft model (speculative_model); without it, prompt lookup")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--runs", type=int, default=2)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from qwq import LLM, SamplingParams
    llm = LLM(None, quantize=args.quantize, enable_prefix_caching=False,
              speculative_model=args.draft, num_speculative_tokens=args.k)
    draft = args.draft is not None
    params = SamplingParams(temperature=0, max_tokens=args.tokens)
    llm.generate([llm.encode_chat([{"role": "user", "content": "hi"}])],
                 SamplingParams(temperature=0, max_tokens=4))  # warm up
    result = {"date": today(), "machine": machine(), "load_before": load_average(),
              "k": args.k, "format": llm.engine.config.quantize, "draft": args.draft,
              "tasks": {}}
    for name, prompt in TASKS.items():
        ids = llm.encode_chat([{"role": "user", "content": prompt}])
        base, spec = [], []
        for _ in range(args.runs):  # alternate, so drift in machine load hits both
            base.append(decode(llm, ids, params, 0, draft))
            spec.append(decode(llm, ids, params, args.k, draft))
        b, s = max(base, key=lambda r: r[0]), max(spec, key=lambda r: r[0])
        result["tasks"][name] = {
            "tokens": len(b[1]), "identical": all(r[1] == b[1] for r in base + spec),
            "tok_s": round(b[0], 2), "tok_s_speculative": round(s[0], 2),
            "speedup": round(s[0] / b[0], 2),
            "acceptance": round(s[3] / s[2], 3) if s[2] else 0.0,
            "accepted_per_step": round(s[3] / max(1, len(s[1]) - s[3]), 2)}
    result["load_after"] = load_average()
    if args.json:
        print(json.dumps(result))
        return
    print(f"{result['date']}  {result['machine']}  format {result['format']}  k={args.k}  "
          f"drafts from {args.draft or 'prompt lookup'}  "
          f"load {result['load_before']} -> {result['load_after']}")
    print(f"{'task':10s} {'tokens':>6s} {'tok/s':>7s} {'spec tok/s':>10s} {'speedup':>8s} "
          f"{'accept':>7s} {'same':>5s}")
    for name, r in result["tasks"].items():
        print(f"{name:10s} {r['tokens']:6d} {r['tok_s']:7.2f} {r['tok_s_speculative']:10.2f} "
              f"{r['speedup']:7.2f}x {r['acceptance']:7.1%} {r['identical']!s:>5s}")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
