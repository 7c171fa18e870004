"""`qwq bench`: llama-bench plus serving, qwq next to its peers in one process tree.

Each system (qwq, llama.cpp through llama-cpp-python on the same GGUF with the same threads,
transformers bf16 on the same weights dequantized) runs in its own child process, so each has
its own peak resident memory (the kernel's high-water mark, VmHWM) and none warms another's
caches. Tests:

  pp      prefill of a 512-token prompt (tok/s)
  tg      decode of 128 tokens at batch 1 after a 42-token prompt (tok/s, after the first)
  batch   aggregate decode throughput at 4/16/64 concurrent sequences of 64 tokens each,
          from the moment all have their first token (qwq: the engine, which also reports the
          rate with the 42-token prefills counted; transformers: batched generate, the first
          token's cost removed; llama-cpp-python has no batched API here)
  ppl     perplexity on qwq/data/ppl.txt (shipped with the package), windows of 512
  mem     qwq serving 16 sequences of 2K tokens: peak RSS against weights + KV cache

The bench/*.py scripts call the same functions.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import resource
import subprocess
import sys
import time
from importlib import resources
from pathlib import Path

SYSTEMS = ("qwq", "llama.cpp", "transformers")
TESTS = ("pp", "tg", "batch", "ppl", "mem")
PROMPT = ("You are a helpful assistant. Explain, step by step and in plain words, how a hash "
          "table handles collisions, and give a short Python example of one.")
FULL = {"pp": 512, "tg": 128, "batch": [4, 16, 64], "batch_tokens": 64, "ppl_window": 512,
        "ppl_windows": 0, "mem_seqs": 16, "mem_tokens": 2048, "runs": 2}
QUICK = {"pp": 64, "tg": 8, "batch": [4], "batch_tokens": 8, "ppl_window": 64,
         "ppl_windows": 1, "mem_seqs": 2, "mem_tokens": 128, "runs": 1}


# -- shared helpers (bench/common.py re-exports these) -----------------------------------------
def ppl_text() -> str:
    """The fixed perplexity text: docstrings of Python standard-library modules (PSF licence)."""
    return resources.files("qwq").joinpath("data/ppl.txt").read_text(encoding="utf-8")


def machine() -> str:
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{os.cpu_count()} cores, {cpu}, {platform.system()}"


def load_average() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "?"


def today() -> str:
    return datetime.date.today().isoformat()


def _proc_status_mib(field: str) -> float | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def peak_rss_mib() -> float:
    """This process's resident-set high-water mark (VmHWM), in MiB."""
    peak = _proc_status_mib("VmHWM")
    return peak if peak is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def rss_mib() -> float:
    """This process's resident set now (VmRSS), in MiB; 0 where /proc is missing."""
    return _proc_status_mib("VmRSS") or 0.0


def reset_peak_rss() -> bool:
    """Restart the high-water mark (Linux: clear_refs 5), so a peak excludes model loading."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def llama_cpp(model_path: str, n_ctx: int = 2048, threads: int | None = None,
              logits_all: bool = False):
    from llama_cpp import Llama
    return Llama(model_path=str(model_path), n_ctx=n_ctx, n_threads=threads or os.cpu_count(),
                 n_threads_batch=threads or os.cpu_count(), logits_all=logits_all,
                 verbose=False, n_batch=512)


def prompt_ids(tok, n: int, salt: int = 0) -> list[int]:
    """n token ids: the fixed prompt, then the perplexity text (salt shifts where it starts,
    so concurrent sequences differ from their first token)."""
    text = f"{salt}. {PROMPT}" if salt else PROMPT
    ids = tok.encode(text)
    if len(ids) < n:
        extra = tok.encode(ppl_text())
        start = (salt * 97) % max(1, len(extra) - n)
        ids += (extra[start:] + extra)[: n - len(ids)]
    return ids[:n]


def ppl_windows(tok, size: int, limit: int = 0) -> list[list[int]]:
    ids = tok.encode(ppl_text())
    chunks = [ids[i:i + size] for i in range(0, len(ids) - size + 1, size)]
    return chunks[:limit] if limit else chunks


def best_of(runs: int, fn) -> float:
    return min(fn() for _ in range(max(1, runs)))


def _nll_to_ppl(nll: float, count: int) -> float:
    return math.exp(nll / count)


# -- qwq ------------------------------------------------------------------------------------------
def qwq_llm(model=None, quantize: str = "auto", **options):
    from qwq import LLM
    return LLM(model, quantize=quantize, enable_prefix_caching=False, **options)


def greedy(new: int):
    """Exactly `new` greedy tokens, each from its own forward: no loop nudges (they insert text
    without a decode step), as llama.cpp and transformers generate."""
    from qwq import SamplingParams
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
    from qwq import SamplingParams

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
    from qwq import SamplingParams
    params = SamplingParams(temperature=0, max_tokens=1, prompt_logprobs=0)
    nll, count = 0.0, 0
    for out in llm.generate(chunks, params):
        for i, entry in enumerate(out.prompt_logprobs[1:], start=1):
            nll -= entry[out.prompt_token_ids[i]]
            count += 1
    return _nll_to_ppl(nll, count)


def qwq_serving_memory(model, quantize: str, seqs: int, tokens: int) -> dict:
    """Serve `seqs` distinct sequences of `tokens` tokens each (prompt plus 16 generated) with a
    KV pool sized for exactly that; peak RSS against weights + KV cache."""
    from qwq import heap
    from qwq.models import load_tokenizer
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
    from qwq import SamplingParams
    from qwq.models import load_tokenizer
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


# -- llama.cpp ------------------------------------------------------------------------------------
def llama_decode(llm, ids: list[int], new: int, runs: int = 2) -> float:
    def once() -> float:
        llm.reset()
        llm.eval(ids)
        t = time.perf_counter()
        for _ in range(new):
            llm.eval([llm.sample(temp=0.0)])
        return (time.perf_counter() - t) / new

    return 1 / best_of(runs, once)


def llama_prefill(llm, ids: list[int], runs: int = 2) -> float:
    def once() -> float:
        llm.reset()
        t = time.perf_counter()
        llm.eval(ids)
        return time.perf_counter() - t

    return len(ids) / best_of(runs, once)


def llama_ppl(path: str, chunks: list[list[int]], threads: int) -> float:
    import numpy as np
    llm = llama_cpp(path, n_ctx=len(chunks[0]) + 8, threads=threads, logits_all=True)
    nll, count = 0.0, 0
    for chunk in chunks:
        llm.reset()
        llm.eval(chunk)
        scores = np.asarray(llm.scores[: len(chunk)], dtype=np.float64)
        scores -= scores.max(-1, keepdims=True)
        logp = scores - np.log(np.exp(scores).sum(-1, keepdims=True))
        nll -= sum(logp[i - 1, chunk[i]] for i in range(1, len(chunk)))
        count += len(chunk) - 1
    return _nll_to_ppl(nll, count)


def run_llama(plan: dict) -> dict:
    from qwq.models import load_tokenizer, resolve
    tok, _ = load_tokenizer(plan["model"])
    path = str(resolve(plan["model"]).path)
    res: dict = {}
    tests, threads = plan["tests"], plan["threads"]
    if set(tests) & {"pp", "tg"}:
        llm = llama_cpp(path, n_ctx=max(1024, plan["pp"] + 8), threads=threads)
        if "pp" in tests:
            res["pp_tok_s"] = llama_prefill(llm, prompt_ids(tok, plan["pp"]), plan["runs"])
        if "tg" in tests:
            res["tg_tok_s"] = llama_decode(llm, prompt_ids(tok, 42), plan["tg"], plan["runs"])
        del llm
    if "ppl" in tests:
        res["ppl"] = llama_ppl(path, ppl_windows(tok, plan["ppl_window"], plan["ppl_windows"]),
                               threads)
    res["format"] = "GGUF as shipped"
    res["peak_rss_mib"] = peak_rss_mib()
    return res


# -- transformers ---------------------------------------------------------------------------------
def sync(device) -> None:
    """Wait for a CUDA device's queued work (timing); nothing elsewhere."""
    import torch
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def transformers_model(model=None, dtype=None):
    """transformers' Qwen2ForCausalLM (bf16 unless told) holding the same weights, dequantized
    by qwq (bit-identical to transformers' own GGUF loader, which is much slower)."""
    import torch
    import transformers
    dtype = dtype or torch.bfloat16

    from qwq.models import resolve
    from qwq.weights import open_checkpoint
    ckpt = open_checkpoint(resolve(model).path)
    hf = {k: v for k, v in ckpt.config.to_hf_dict().items()
          if k not in ("architectures", "model_type")}
    with torch.device("meta"):
        net = transformers.Qwen2ForCausalLM(transformers.Qwen2Config(**hf))
    net.load_state_dict(dict(ckpt.iter_tensors(dtype=dtype)), assign=True)
    net.model.rotary_emb = type(net.model.rotary_emb)(net.config)
    return net.to(dtype).eval()


def transformers_decode(net, prompts: list[list[int]], new: int, runs: int = 1) -> float:
    """Generated tok/s for a batch of equal-length prompts, the first token's cost removed."""
    import torch
    x = torch.tensor(prompts, device=net.device)

    def once() -> float:
        with torch.no_grad():
            t = time.perf_counter()
            net.generate(x, max_new_tokens=new, min_new_tokens=new, do_sample=False)
            sync(x.device)
            total = time.perf_counter() - t
            t = time.perf_counter()
            net.generate(x, max_new_tokens=1, do_sample=False)
            sync(x.device)
            first = time.perf_counter() - t
        return (total - first) / (new - 1)

    return len(prompts) / best_of(runs, once)


def transformers_prefill(net, ids: list[int], runs: int = 2) -> float:
    import torch

    def once() -> float:
        with torch.no_grad():
            t = time.perf_counter()
            net(torch.tensor([ids]), logits_to_keep=1)
            return time.perf_counter() - t

    return len(ids) / best_of(runs, once)


def transformers_ppl(net, chunks: list[list[int]]) -> float:
    import torch
    nll, count = 0.0, 0
    with torch.no_grad():
        for chunk in chunks:
            logp = net(torch.tensor([chunk])).logits[0].float().log_softmax(-1)
            nll -= float(logp[:-1].gather(1, torch.tensor(chunk[1:])[:, None]).sum())
            count += len(chunk) - 1
    return _nll_to_ppl(nll, count)


def run_transformers(plan: dict) -> dict:
    from qwq.models import load_tokenizer
    tok, _ = load_tokenizer(plan["model"])
    net = transformers_model(plan["model"])
    res: dict = {"format": "bf16, dequantized"}
    tests = plan["tests"]
    if "pp" in tests:
        res["pp_tok_s"] = transformers_prefill(net, prompt_ids(tok, plan["pp"]), plan["runs"])
    if "tg" in tests:
        res["tg_tok_s"] = transformers_decode(net, [prompt_ids(tok, 42)], plan["tg"], 1)
    if "batch" in tests:
        res["batch_tok_s"] = {str(n): transformers_decode(
            net, [prompt_ids(tok, 42, salt=i + 1) for i in range(n)], plan["batch_tokens"], 1)
            for n in plan["batch"]}
    if "ppl" in tests:
        res["ppl"] = transformers_ppl(net, ppl_windows(tok, plan["ppl_window"],
                                                       plan["ppl_windows"]))
    res["peak_rss_mib"] = peak_rss_mib()
    return res


RUNNERS = {"qwq": run_qwq, "llama.cpp": run_llama, "transformers": run_transformers}


# -- the parent: one child per system, a table of ratios -------------------------------------------
def child(system: str, plan: dict) -> dict:
    import torch
    torch.set_num_threads(plan["threads"])
    if system == "qwq-serve":
        return qwq_serving_memory(plan["model"], plan["quantize"], plan["mem_seqs"],
                                  plan["mem_tokens"])
    return RUNNERS[system](plan)


def spawn(system: str, plan: dict, timeout: float | None = None) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": str(plan["threads"])}
    cmd = [sys.executable, "-m", "qwq.benchmark", "--child", system, json.dumps(plan)]
    t = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout,
                          check=False)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        return {"error": f"exit {proc.returncode}: {' | '.join(tail)}"}
    out = json.loads(lines[-1])
    out["wall_s"] = round(time.perf_counter() - t, 1)
    return out


def make_plan(args: argparse.Namespace) -> dict:
    plan = dict(QUICK if args.quick else FULL)
    plan.update(model=args.model, quantize=args.quantize, threads=args.threads,
                tests=[t for t in args.tests.split(",") if t])
    if args.batch:
        plan["batch"] = [int(n) for n in args.batch.split(",")]
    if args.mem_tokens:
        plan["mem_tokens"] = args.mem_tokens
    if args.mem_seqs:
        plan["mem_seqs"] = args.mem_seqs
    return plan


def run(plan: dict, systems: list[str]) -> dict:
    result = {"date": today(), "machine": machine(), "load_before": load_average(),
              "threads": plan["threads"], "plan": plan, "systems": {}}
    for system in systems:
        result["systems"][system] = spawn(system, plan)
        print(f"{system}: {json.dumps(result['systems'][system])}", file=sys.stderr, flush=True)
    if "mem" in plan["tests"] and "qwq" in systems:
        result["serving_memory"] = spawn("qwq-serve", plan)
        print(f"serving: {json.dumps(result['serving_memory'])}", file=sys.stderr, flush=True)
    result["load_after"] = load_average()
    return result


def _fmt(value, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def table(result: dict) -> str:
    systems = result["systems"]
    base = systems.get("llama.cpp", {})
    qwq = systems.get("qwq", {})
    rows = [(f"qwq bench  {result['date']}  {result['machine']}  threads {result['threads']}  "
             f"load {result['load_before']} -> {result['load_after']}"),
            (f"{'system':13s} {'format':20s} {'pp tok/s':>9s} {'pp/llama':>9s} "
             f"{'tg tok/s':>9s} {'tg/llama':>9s} {'ppl':>8s} {'ppl/llama':>9s} "
             f"{'peak MiB':>9s}")]
    for name, r in systems.items():
        if "error" in r:
            rows.append(f"{name:13s} error: {r['error']}")
            continue
        tg, btg = r.get("tg_tok_s"), base.get("tg_tok_s")
        pp, bpp = r.get("pp_tok_s"), base.get("pp_tok_s")
        ppl, bppl = r.get("ppl"), base.get("ppl")
        rows.append(f"{name:13s} {str(r.get('format', ''))[:20]:20s} "
                    f"{_fmt(pp):>9s} {_fmt(pp / bpp if pp and bpp else None, 2):>9s} "
                    f"{_fmt(tg):>9s} "
                    f"{_fmt(tg / btg if tg and btg else None, 2):>9s} {_fmt(ppl, 3):>8s} "
                    f"{_fmt(ppl / bppl if ppl and bppl else None, 3):>9s} "
                    f"{_fmt(r.get('peak_rss_mib'), 0):>9s}")
    for name, r in systems.items():
        for n, rate in (r.get("batch_tok_s") or {}).items():
            one = r.get("tg_tok_s")
            whole = (r.get("batch_with_prefill_tok_s") or {}).get(n)
            rows.append(f"{name} batch {n:>3s}: {rate:.1f} tok/s aggregate decode"
                        + (f" = {rate / one:.2f}x its batch-1 decode" if one else "")
                        + (f"; {whole:.1f} tok/s counting the prefills" if whole else ""))
    if qwq.get("tg_tok_s") and systems.get("transformers", {}).get("tg_tok_s"):
        rows.append(f"qwq / transformers decode: "
                    f"{qwq['tg_tok_s'] / systems['transformers']['tg_tok_s']:.2f}x")
    mem = result.get("serving_memory")
    if mem and "error" not in mem:
        rows.append(f"qwq serving {mem['seqs']} x {mem['tokens_per_seq']} tokens: peak RSS "
                    f"{mem['peak_rss_mib']:.0f} MiB = {mem['rss_over_weights_kv']:.2f}x weights "
                    f"({mem['weights_mib']:.0f} MiB) + KV cache ({mem['kv_cache_mib']:.0f} MiB)"
                    + ("; loading peaked at " + f"{mem['load_peak_rss_mib']:.0f} MiB"
                       if mem.get("peak_excludes_loading") else " (loading included)"))
        if mem.get("runtime_rss_mib"):
            rows.append(f"  less the runtime before the model ({mem['runtime_rss_mib']:.0f} MiB: "
                        f"python, torch, tokenizer): {mem['model_rss_over_weights_kv']:.2f}x")
    elif mem:
        rows.append(f"qwq serving memory: error: {mem['error']}")
    return "\n".join(rows)


def add_parser(sub) -> None:
    """Register `qwq bench` on the CLI's subparsers."""
    p = sub.add_parser("bench", help="prefill, decode, batch throughput, memory, perplexity: "
                                     "qwq next to llama.cpp and transformers")
    p.add_argument("--model", "-m", default=None, help="a .gguf file (default: the demo model)")
    p.add_argument("--quantize", default="auto",
                   help="qwq's format: auto, q5_0, q8_0, w8a8, int8, int4, none")
    p.add_argument("--systems", default=",".join(SYSTEMS),
                   help=f"comma-separated, of {', '.join(SYSTEMS)}")
    p.add_argument("--tests", default=",".join(TESTS), help=f"comma-separated, of "
                                                            f"{', '.join(TESTS)}")
    p.add_argument("--threads", type=int, default=min(os.cpu_count() or 1, 8))
    p.add_argument("--batch", default=None, help="concurrency levels, e.g. 4,16,64")
    p.add_argument("--mem-seqs", type=int, default=None, help="sequences for the mem test")
    p.add_argument("--mem-tokens", type=int, default=None, help="tokens per sequence (mem)")
    p.add_argument("--quick", action="store_true", help="tiny sizes, for a smoke test")
    p.add_argument("--json", action="store_true", help="print one JSON object, no table")
    p.set_defaults(func=cmd_bench)


def cmd_bench(args: argparse.Namespace) -> int:
    from qwq.errors import QwQError
    systems = [s for s in args.systems.split(",") if s]
    bad = [s for s in systems if s not in SYSTEMS] + \
        [t for t in args.tests.split(",") if t and t not in TESTS]
    if bad:
        raise QwQError(f"unknown system or test {bad[0]!r}; systems: {', '.join(SYSTEMS)}; "
                       f"tests: {', '.join(TESTS)}")
    result = run(make_plan(args), systems)
    print(json.dumps(result) if args.json else table(result))
    return 0


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--child":
        print(json.dumps(child(sys.argv[2], json.loads(sys.argv[3]))))
    else:
        sys.exit("run `qwq bench` (this module's entry point is for its child processes)")
