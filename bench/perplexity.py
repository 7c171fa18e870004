"""Perplexity of qwq (per quantization format) and llama.cpp (its own llama-perplexity, in a
child process) on the same GGUF and the same text: qwq/data/ppl.txt in windows of 512 tokens,
each window's second half scored (llama-perplexity's rule, qwq.benchmark.scored).

    python bench/perplexity.py [--formats none,int8,int4/int8] [--window 512]

A format is qwq's quantize= value, optionally "/head" for the output head's own format
(int4/int8: int4 layers, int8 head).
"""

from __future__ import annotations

import argparse
import json

from common import machine, today

from qwq.benchmark import llama_cpp, ppl_text, ppl_windows, scored  # shared with `qwq bench`
from qwq.benchmark import qwq_ppl as score_ppl


def qwq_ppl(quantize: str, chunks: list[list[int]]) -> float:
    """quantize: a format, or layers/head such as int4/int8."""
    from qwq import LLM
    body, _, head = quantize.partition("/")
    llm = LLM(None, quantize=body, enable_prefix_caching=False,
              **({"head_quantize": head} if head else {}))
    return score_ppl(llm, chunks)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--formats", default="none,int8,int4,auto")
    ap.add_argument("--window", type=int, default=512)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    from qwq.demo import demo_model_path
    from qwq.models import load_tokenizer
    tok, _ = load_tokenizer(None)
    chunks = ppl_windows(tok, args.window)
    result = {"date": today(), "machine": machine(), "tokens_scored":
              len(chunks) * len(scored(args.window)),
              "llama.cpp": llama_cpp.perplexity(str(demo_model_path()),
                                                ppl_text(), args.window, 0,
                                                args.threads)}
    for fmt in args.formats.split(","):
        result[f"qwq {fmt}"] = qwq_ppl(fmt, chunks)
    base = result["llama.cpp"]
    for key, value in result.items():
        if key.startswith("qwq"):
            print(f"{key:12s} ppl {value:.4f}  ratio to llama.cpp {value / base:.4f}")
    print(f"llama.cpp    ppl {base:.4f}")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
