"""Perplexity of qwq (per quantization format) and llama.cpp on the same GGUF and the same
token ids: qwq/data/ppl.txt in windows of 512 tokens, every position but the first scored.

    python bench/perplexity.py [--formats none,int8,int4/int8] [--window 512]

A format is qwq's quantize= value, optionally "/head" for the output head's own format
(int4/int8: int4 layers, int8 head).
"""

from __future__ import annotations

import argparse
import json

from common import DATA, machine, today

from qwq.benchmark import llama_ppl  # shared with `qwq bench`
from qwq.benchmark import qwq_ppl as score_ppl


def windows(ids: list[int], size: int) -> list[list[int]]:
    return [ids[i:i + size] for i in range(0, len(ids) - size + 1, size)]


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
    chunks = windows(tok.encode((DATA / "ppl.txt").read_text()), args.window)
    result = {"date": today(), "machine": machine(), "tokens_scored":
              len(chunks) * (args.window - 1),
              "llama.cpp": llama_ppl(str(demo_model_path()), chunks, args.threads)}
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
