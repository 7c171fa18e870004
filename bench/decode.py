"""Decode (tg128) and prefill (pp512) at batch 1: qwq, llama.cpp (its own llama-bench, same
GGUF, same threads, in a child process) and transformers bf16, in one run. qwq decodes after a
42-token prompt, llama-bench's tg after none.

    python bench/decode.py [--formats auto,int4/int8,none] [--rounds 3] [--threads 2]
                           [--no-transformers]

A format is qwq's quantize= value, optionally "/head" for the output head's own format
(int4/int8: int4 layers, int8 head). The machine is shared and noisy, so every system is
loaded once and the runs interleave: round 1 of each system, then round 2, ...; each figure
is the best round. The measurements are qwq.benchmark's (what `qwq bench` runs); this script
adds several formats and the interleaving.
"""

from __future__ import annotations

import argparse
import json

import torch

from qwq import benchmark as B
from qwq.benchmark import llama_cpp


def qwq_options(fmt: str) -> dict:
    """"int4/int8" -> quantize="int4", head_quantize="int8"; "auto" -> quantize="auto"."""
    body, _, head = fmt.partition("/")
    return {"quantize": body, **({"head_quantize": head} if head else {})}


def qwq_rates(fmt: str, ids42, ids512, new: int) -> dict:
    """One round of each measurement (tok/s), the model loaded once."""
    from qwq import SamplingParams
    llm = B.qwq_llm(None, kv_cache_memory=256 << 20, **qwq_options(fmt))
    llm.generate([ids42], SamplingParams(temperature=0, max_tokens=8))  # warm up
    return {"decode_tok_s": lambda: B.qwq_decode(llm.engine, ids42, new, runs=1),
            "prefill_tok_s": lambda: B.qwq_prefill(llm, ids512, runs=1)}


def llama_rates(path: str, prompt: int, new: int, threads: int) -> dict:
    return {"decode_tok_s": lambda: llama_cpp.bench(path, threads, 0, new, 1)["tg_tok_s"],
            "prefill_tok_s": lambda: llama_cpp.bench(path, threads, prompt, 0, 1)["pp_tok_s"]}


def interleaved(rates: dict[str, dict], rounds: int) -> dict[str, dict]:
    """Best of `rounds` for each system, the systems taking turns within each round."""
    best: dict[str, dict] = {name: {} for name in rates}
    for _ in range(rounds):
        for name, fns in rates.items():
            for kind, fn in fns.items():
                best[name][kind] = max(best[name].get(kind, 0.0), fn())
    return best


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--formats", default="auto,int4/int8,none")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--new", type=int, default=128)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--no-transformers", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from qwq.demo import demo_model_path
    from qwq.models import load_tokenizer
    tok, _ = load_tokenizer(None)
    ids42, ids512 = B.prompt_ids(tok, 42), B.prompt_ids(tok, 512)
    rates = {"llama.cpp": llama_rates(str(demo_model_path()), len(ids512), args.new,
                                      args.threads)}
    for fmt in args.formats.split(","):
        rates[f"qwq {fmt}"] = qwq_rates(fmt, ids42, ids512, args.new)
    res = {"date": B.today(), "machine": B.machine(), "threads": args.threads,
           "rounds": args.rounds, **interleaved(rates, args.rounds)}
    if not args.no_transformers:
        net = B.transformers_model()
        res["transformers bf16"] = {"decode_tok_s": B.transformers_decode(net, [ids42],
                                                                          args.new)}
    base = res["llama.cpp"]
    for key, r in res.items():
        if isinstance(r, dict):
            ratio = r["decode_tok_s"] / base["decode_tok_s"]
            pre = f"  prefill {r['prefill_tok_s']:.1f} tok/s" if "prefill_tok_s" in r else ""
            print(f"{key:18s} decode {r['decode_tok_s']:6.1f} tok/s ({ratio:.2f}x llama.cpp){pre}")
    print(json.dumps(res))


if __name__ == "__main__":
    main()
