"""Decode (tg128 after a 42-token prompt) and prefill (pp512) at batch 1: qwq, llama.cpp
(llama-cpp-python, same GGUF, same threads) and transformers bf16, in one run.

    python bench/decode.py [--formats auto,int4/int8,none] [--rounds 3] [--threads 2]
                           [--no-transformers]

A format is qwq's quantize= value, optionally "/head" for the output head's own format
(int4/int8: int4 layers, int8 head). The machine is shared and noisy, so every system is
loaded once and the runs interleave: round 1 of each system, then round 2, ...; each figure
is the best round.
"""

from __future__ import annotations

import argparse
import json
import time

import torch
from common import DATA, llama_cpp, machine, today

PROMPT = ("You are a helpful assistant. Explain, step by step and in plain words, how a hash "
          "table handles collisions, and give a short Python example of one.")


def prompt_ids(tok, n: int) -> list[int]:
    ids = tok.encode(PROMPT)
    return ids[:n] if len(ids) >= n else (ids + tok.encode((DATA / "ppl.txt").read_text()))[:n]


def qwq_options(fmt: str) -> dict:
    """"int4/int8" -> quantize="int4", head_quantize="int8"; "auto" -> quantize="auto"."""
    body, _, head = fmt.partition("/")
    return {"quantize": body, **({"head_quantize": head} if head else {})}


def qwq_timers(fmt: str, ids42, ids512, new: int) -> dict:
    """Seconds per decoded token and seconds for one 512-token prefill, one call each."""
    from qwq import LLM, SamplingParams
    llm = LLM(None, enable_prefix_caching=False, kv_cache_memory=256 << 20, **qwq_options(fmt))
    params = SamplingParams(temperature=0, max_tokens=new, min_tokens=new)
    llm.generate([ids42], SamplingParams(temperature=0, max_tokens=8))  # warm up

    def decode() -> float:
        stamps = [time.perf_counter() for _ in llm.stream(ids42, params)]
        return (stamps[-1] - stamps[0]) / (len(stamps) - 1)  # per token after the first

    def prefill() -> float:
        t = time.perf_counter()
        llm.generate([ids512], SamplingParams(temperature=0, max_tokens=1))
        return time.perf_counter() - t

    return {"decode": decode, "prefill": prefill}


def llama_timers(path: str, ids42, ids512, new: int, threads: int) -> dict:
    llm = llama_cpp(path, n_ctx=1024, threads=threads)

    def decode() -> float:
        llm.reset()
        llm.eval(ids42)
        t = time.perf_counter()
        tok = ids42[-1]
        for _ in range(new):
            tok = llm.sample(temp=0.0) if hasattr(llm, "sample") else tok
            llm.eval([tok])
        return (time.perf_counter() - t) / new

    def prefill() -> float:
        llm.reset()
        t = time.perf_counter()
        llm.eval(ids512)
        return time.perf_counter() - t

    return {"decode": decode, "prefill": prefill}


def interleaved(timers: dict[str, dict], rounds: int) -> dict[str, dict]:
    """Best of `rounds` for each system, the systems taking turns within each round."""
    best: dict[str, dict] = {name: {} for name in timers}
    for _ in range(rounds):
        for name, fns in timers.items():
            for kind, fn in fns.items():
                best[name][kind] = min(best[name].get(kind, float("inf")), fn())
    return {name: {"decode_tok_s": 1 / b["decode"], "prefill_tok_s": 512 / b["prefill"]}
            for name, b in best.items()}


def transformers_rates(ids42, new: int) -> dict:
    import transformers

    from qwq.demo import demo_model_path
    from qwq.weights import open_checkpoint
    ckpt = open_checkpoint(demo_model_path())
    hf = {k: v for k, v in ckpt.config.to_hf_dict().items()
          if k not in ("architectures", "model_type")}
    model = transformers.Qwen2ForCausalLM(transformers.Qwen2Config(**hf)).to(torch.bfloat16)
    model.load_state_dict(dict(ckpt.iter_tensors(dtype=torch.bfloat16)))
    x = torch.tensor([ids42])

    def decode() -> float:
        with torch.no_grad():
            t = time.perf_counter()
            model.generate(x, max_new_tokens=new, min_new_tokens=new, do_sample=False)
            total = time.perf_counter() - t
            t = time.perf_counter()
            model.generate(x, max_new_tokens=1, do_sample=False)
            first = time.perf_counter() - t
        return (total - first) / (new - 1)

    return {"decode_tok_s": 1 / decode()}


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
    ids42, ids512 = prompt_ids(tok, 42), prompt_ids(tok, 512)
    timers = {"llama.cpp": llama_timers(str(demo_model_path()), ids42, ids512, args.new,
                                        args.threads)}
    for fmt in args.formats.split(","):
        timers[f"qwq {fmt}"] = qwq_timers(fmt, ids42, ids512, args.new)
    res = {"date": today(), "machine": machine(), "threads": args.threads,
           "rounds": args.rounds, **interleaved(timers, args.rounds)}
    if not args.no_transformers:
        res["transformers bf16"] = transformers_rates(ids42, args.new)
    base = res["llama.cpp"]
    for key, r in res.items():
        if isinstance(r, dict):
            ratio = r["decode_tok_s"] / base["decode_tok_s"]
            pre = f"  prefill {r['prefill_tok_s']:.1f} tok/s" if "prefill_tok_s" in r else ""
            print(f"{key:18s} decode {r['decode_tok_s']:6.1f} tok/s ({ratio:.2f}x llama.cpp){pre}")
    print(json.dumps(res))


if __name__ == "__main__":
    main()
