"""qwq's side of a benchmark: each measurement through the one engine (`qwq.LLM`)."""

from __future__ import annotations

import time

from qwq import heap
from qwq.benchmark.machine import peak_rss_mib, reset_peak_rss, rss_mib
from qwq.benchmark.workloads import best_of, nll_to_ppl, ppl_windows, prompt_ids, scored
from qwq.llm import LLM
from qwq.models import load_tokenizer
from qwq.sampling_params import SamplingParams


def parting(chosen: list[int], other: list[int],
            logprobs: list[dict]) -> tuple[int, float | None] | None:
    """Where two greedy answers first differ, and how far `other`'s token there was below
    `chosen`'s in `logprobs`, the top logprobs of the decode steps that chose `chosen` (None
    where either is not among them): the gap read from the step that made the choice, never from a
    fresh prefill, which rounds differently and can rank a near-tie the other way. None where
    they do not differ (one may be a prefix of the other)."""
    at = next((i for i, (a, b) in enumerate(zip(chosen, other)) if a != b), None)
    if at is None:
        return None
    lp = {k: getattr(v, "logprob", v) for k, v in logprobs[at].items()}
    if chosen[at] not in lp or other[at] not in lp:
        return at, None
    return at, round(lp[chosen[at]] - lp[other[at]], 3)


def qwq_llm(model=None, quantize: str = "auto", **options):
    return LLM(model, quantize=quantize, enable_prefix_caching=False, **options)


def greedy(new: int):
    """Exactly `new` greedy tokens, each from its own forward: no loop nudges (they insert text
    without a decode step), as llama.cpp and transformers generate."""
    return SamplingParams(temperature=0, max_tokens=new, min_tokens=new, ignore_eos=True,
                          loop_control="off")


def qwq_decode(engine, ids: list[int], new: int, runs: int = 2) -> float:
    """Batch-1 decode tok/s through the engine, the first token (the prefill) not counted."""
    params = greedy(new)

    def once() -> float:
        rid = engine.add_request(ids, params)
        stamps: list[float] = []
        while engine.is_active(rid):
            stamps += [time.perf_counter() for out in engine.step() if out.request_id == rid]
        return (stamps[-1] - stamps[0]) / max(1, len(stamps) - 1)  # per token after the first

    return 1 / best_of(runs, once)


def qwq_prefill(llm, ids: list[int], runs: int = 2) -> float:

    def once() -> float:
        t = time.perf_counter()
        llm.generate([ids], SamplingParams(temperature=0, max_tokens=1))
        return time.perf_counter() - t

    return len(ids) / best_of(runs, once)


def qwq_batch(llm, prompts: list[list[int]], new: int) -> tuple[float, float]:
    """All sequences submitted at once, stepped through the engine. Returns the decode rate
    once every sequence has its first token (generated tok/s, as llama-batched-bench's S_TG
    and transformers_decode here count it), and generated tok/s of the whole wall time, the
    prefills included."""
    engine = llm.engine
    params = greedy(new)
    t0 = time.perf_counter()
    ids = [engine.add_request(p, params) for p in prompts]
    made = dict.fromkeys(ids, 0)
    started_at = started_with = None
    finished = 0
    while finished < len(ids):
        for out in engine.step():
            made[out.request_id] = len(out.outputs[0].token_ids)
            finished += out.finished
        if started_at is None and all(made.values()):
            started_at, started_with = time.perf_counter(), sum(made.values())
    end = time.perf_counter()
    total = sum(made.values())
    if started_at is None or total == started_with or end <= started_at:
        decode = float("nan")  # some sequence never got a token, or all finished in one step
    else:
        decode = (total - started_with) / (end - started_at)
    return decode, total / (end - t0)


def qwq_ppl(llm, chunks: list[list[int]]) -> float:
    """Perplexity over the chunks, each scored where llama-perplexity scores it (`scored`)."""
    params = SamplingParams(temperature=0, max_tokens=1, prompt_logprobs=0)
    nll, count = 0.0, 0
    for out in llm.generate(chunks, params):
        for i in scored(len(out.prompt_token_ids)):
            nll -= out.prompt_logprobs[i][out.prompt_token_ids[i]]
            count += 1
    return nll_to_ppl(nll, count)


def qwq_serving_memory(model, quantize: str, seqs: int, tokens: int) -> dict:
    """Serve `seqs` distinct sequences of `tokens` tokens each (prompt plus 16 generated) with a
    KV pool sized for exactly that; peak RSS against weights + KV cache."""
    tok, _ = load_tokenizer(model)
    new = min(16, tokens // 2)
    block = 16
    prompts = [prompt_ids(tok, tokens - new, salt=i + 1) for i in range(seqs)]
    # tokenizing them leaves ~100 MB of freed heap resident until the next trim: the harness's
    # garbage, not serving memory (the runner trims after each prefill step)
    heap.trim()
    runtime = rss_mib()  # python, torch, the tokenizer: what a process holds before the model
    llm = qwq_llm(model, quantize, num_kv_blocks=seqs * -(-tokens // block),
                  block_size=block, max_num_seqs=seqs)
    net, kv = llm.engine.runner.model, llm.engine.runner.kv
    weights = sum(t.numel() * t.element_size() for t in
                  list(net.parameters()) + list(net.buffers()))
    kv_bytes = kv.k.numel() * kv.k.element_size() * 2
    load_peak = peak_rss_mib()
    reset = reset_peak_rss()
    t = time.perf_counter()
    outs = llm.generate(prompts, greedy(new))
    dt = time.perf_counter() - t
    peak = peak_rss_mib()
    base = (weights + kv_bytes) / 2**20
    return {"seqs": seqs, "tokens_per_seq": tokens, "seconds": round(dt, 1),
            "generated": sum(len(o.outputs[0].token_ids) for o in outs),
            "weights_mib": round(weights / 2**20, 1), "kv_cache_mib": round(kv_bytes / 2**20, 1),
            "peak_rss_mib": round(peak, 1), "rss_over_weights_kv": round(peak / base, 3),
            "runtime_rss_mib": round(runtime, 1),
            "model_rss_over_weights_kv": round((peak - runtime) / base, 3),
            "load_peak_rss_mib": round(load_peak, 1), "peak_excludes_loading": reset}


def run_qwq(plan: dict) -> dict:
    tok, _ = load_tokenizer(plan["model"])
    res: dict = {}
    tests = plan["tests"]
    if set(tests) & {"pp", "tg", "batch", "ppl"}:
        llm = qwq_llm(plan["model"], plan["quantize"])
        llm.generate([prompt_ids(tok, 42)], SamplingParams(temperature=0, max_tokens=4))
        if "pp" in tests:
            res["pp_tok_s"] = qwq_prefill(llm, prompt_ids(tok, plan["pp"]), plan["runs"])
        if "tg" in tests:
            res["tg_tok_s"] = qwq_decode(llm.engine, prompt_ids(tok, 42), plan["tg"], plan["runs"])
        if "batch" in tests:
            rates = {str(n): qwq_batch(llm, [prompt_ids(tok, 42, salt=i + 1) for i in range(n)],
                                       plan["batch_tokens"])
                     for n in plan["batch"]}
            res["batch_tok_s"] = {n: decode for n, (decode, _) in rates.items()}
            res["batch_with_prefill_tok_s"] = {n: whole for n, (_, whole) in rates.items()}
        if "ppl" in tests:
            res["ppl"] = qwq_ppl(llm, ppl_windows(tok, plan["ppl_window"], plan["ppl_windows"]))
        res["format"] = llm.engine.config.quantize
        del llm
    res["peak_rss_mib"] = peak_rss_mib()
    return res

