"""A GGUF computed as shipped: load time, peak memory and batch-1 decode of qwq next to
llama.cpp's llama-bench on the same file, and both against the machine's DRAM limit.

    python bench/gguf_native.py                         # the demo GGUF
    python bench/gguf_native.py --model /tmp/qwq32b-q4_k_m.gguf --new 16 --runs 1
    (make that file first: python bench/random_gguf.py --shape qwq-32b --out /tmp/...)

Each system runs in its own child process (its own peak RSS). The limit is read bandwidth
(a torch sum over 2 GiB, the same threads, measured in this run) over the bytes one decode
step reads: every linear layer's weights in their file formats, the embedding excluded (a
step reads one row of it).

The machine is shared, and its read bandwidth moves by a third between minutes (14-25 GB/s
on the same host), or flips between two levels within seconds (45 and 75 GB/s on an AMD host).
So each fraction of the limit pairs a rate with the bandwidth measured next to it: qwq's child
measures the bandwidth before and after each of its decode runs (after the first probe it
decodes a few untimed tokens, since the probe flushes the caches) and takes their mean; a run
whose two probes differ by more than 15% ran while the bandwidth changed, and its fraction
means nothing: it is listed (steady false) but left out of the median of the runs' fractions
(tok/s: the median of all runs). llama-bench's fraction takes the mean of the bandwidth measured
just before and just after it. read_gb_s is the first measurement.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

import torch

from qwq.benchmark import llama_cpp
from qwq.benchmark.machine import best_seconds, cpu_model, peak_rss_mib, today
from qwq.models import resolve
from qwq.weights import open_checkpoint

PROMPT = "The history of the printing press begins"


def read_bandwidth(threads: int, gib: int = 2) -> float:
    """GB/s of a sum over `gib` GiB of float32 (best of 3)."""
    torch.set_num_threads(threads)
    x = torch.ones(gib << 28, dtype=torch.float32)
    best = best_seconds(x.sum, 3)
    del x
    return (gib << 30) / best / 1e9


def step_bytes(path: str) -> int:
    """Bytes one decode step reads in the file's formats: every tensor but the embedding."""
    ckpt = open_checkpoint(path)
    return sum(ckpt.stored(n).data.nbytes for n in ckpt.tensor_names()
               if n.endswith("proj.weight") or n == "lm_head.weight"
               or (n == "model.embed_tokens.weight" and ckpt.config.tie_word_embeddings))


def qwq_child(path: str, threads: int, new: int, runs: int) -> dict:
    from qwq import LLM
    from qwq.benchmark.qwq_runs import greedy, qwq_decode
    torch.set_num_threads(threads)
    t = time.perf_counter()
    llm = LLM(path, max_model_len=1024, enable_prefix_caching=False,
              kv_cache_memory=256 << 20)
    load = time.perf_counter() - t
    ids = llm.tokenizer.encode(PROMPT)
    llm.generate([ids], greedy(1))
    first = time.perf_counter() - t
    # peak RSS through the load and the first token; the bandwidth probes below would add
    # their 2 GiB (a decode step allocates little: the KV cache is made at load)
    peak = peak_rss_mib()
    nbytes = step_bytes(path)
    rates, probes = [], []
    for _ in range(runs):  # each run between two measures of the bandwidth
        before = read_bandwidth(threads)
        # the probe's 2 GiB flushed every cache: a short decode first brings back the steady
        # state a long decode runs in (on a 260 MB-L3 host the timed rate read ~10% low without)
        qwq_decode(llm.engine, ids, 8, 1)
        rates.append(qwq_decode(llm.engine, ids, new, 1))
        probes.append((before, read_bandwidth(threads)))
    listed = []
    for rate, (before, after) in zip(rates, probes):
        bandwidth = (before + after) / 2
        listed.append({"tok_s": round(rate, 2), "read_gb_s": round(bandwidth, 1),
                       "probes": [round(before, 1), round(after, 1)],
                       "steady": max(before, after) <= 1.15 * min(before, after),
                       "fraction": round(rate * nbytes / (bandwidth * 1e9), 3)})
    steady = [r["fraction"] for r in listed if r["steady"]]
    return {"format": llm.engine.config.quantize, "load_s": round(load, 1),
            "load_and_first_token_s": round(first, 1), "tg_tok_s": statistics.median(rates),
            "peak_rss_mib": round(peak), "runs": listed,
            "fraction_of_limit": round(statistics.median(steady), 3) if steady else None}


def run_child(args: list[str], threads: int) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    proc = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True,
                          env=env, check=False)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode or not lines:
        return {"error": f"{llama_cpp.describe_exit(proc.returncode)}: "
                         f"{llama_cpp.tail(proc.stderr, 4)}"}
    return json.loads(lines[-1])


def llama(path: str, threads: int, new: int, runs: int) -> dict:
    """llama-bench's tg on the file, and llama-server's load (start to healthy, then to its
    first token of the same prompt), each in its own process."""
    from qwq.models import load_tokenizer
    ids = load_tokenizer(path)[0].encode(PROMPT)
    try:
        res = llama_cpp.bench(path, threads, 0, new, runs)
        t = time.perf_counter()
        with llama_cpp.server(path, threads, ctx=1024, timeout=1800) as url:
            res["load_s"] = round(time.perf_counter() - t, 1)
            llama_cpp.greedy_ids(url, ids, 1)
            res["load_and_first_token_s"] = round(time.perf_counter() - t, 1)
    except llama_cpp.PeerError as e:
        return {"error": str(e)}
    res["peak_rss_mib"] = round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024)
    return res


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=None, help="a .gguf (default: the demo model)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--new", type=int, default=64)
    ap.add_argument("--runs", type=int, default=2)
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    path = str(resolve(args.model).path)
    if args.child:
        print(json.dumps(qwq_child(path, args.threads, args.new, args.runs)))
        return
    bandwidth = read_bandwidth(args.threads)
    nbytes = step_bytes(path)
    limit = bandwidth * 1e9 / nbytes
    res = {"date": today(), "cpu": cpu_model(), "nproc": os.cpu_count(), "model": path,
           "file_gb": round(os.path.getsize(path) / 1e9, 2), "read_gb_s": round(bandwidth, 1),
           "step_gb": round(nbytes / 1e9, 3), "limit_tok_s": round(limit, 2),
           "llama.cpp": llama(path, args.threads, args.new, args.runs)}
    after = read_bandwidth(args.threads)
    res["qwq"] = run_child(["--model", path, "--threads", str(args.threads), "--new",
                            str(args.new), "--runs", str(args.runs), "--child"], args.threads)
    lc = res["llama.cpp"]
    if "tg_tok_s" in lc:
        lc["read_gb_s"] = round((bandwidth + after) / 2, 1)
        lc["fraction_of_limit"] = round(lc["tg_tok_s"] * nbytes / (lc["read_gb_s"] * 1e9), 3)
    q, lc = res["qwq"].get("tg_tok_s"), res["llama.cpp"].get("tg_tok_s")
    if q and lc:
        res["qwq_over_llama_cpp"] = round(q / lc, 3)
    print(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
