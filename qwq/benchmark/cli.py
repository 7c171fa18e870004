"""`qwq bench`: each system in its own child process, then one table of ratios.

Each child (`python -m qwq.benchmark --child SYSTEM PLAN`) measures one system and prints one
JSON line, so each has its own peak resident memory (the kernel's high-water mark, VmHWM) and
none warms another's caches; llama.cpp's tools run in children of their own (llama_cpp.py).
A child that fails becomes that system's error in the table, never the end of the run.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import torch

from qwq.benchmark import hf, llama_cpp
from qwq.benchmark.llama_cpp import describe_exit, tail
from qwq.benchmark.machine import load_average, machine, peak_rss_mib, today
from qwq.benchmark.qwq_runs import qwq_serving_memory, run_qwq
from qwq.benchmark.report import table
from qwq.benchmark.workloads import FULL, QUICK
from qwq.errors import QwQError

SYSTEMS = ("qwq", "llama.cpp", "transformers")
TESTS = ("pp", "tg", "batch", "ppl", "mem")
RUNNERS = {"qwq": run_qwq, "llama.cpp": llama_cpp.measure, "transformers": hf.run_transformers}


def child(system: str, plan: dict) -> dict:
    torch.set_num_threads(plan["threads"])
    if system == "qwq-serve":
        return qwq_serving_memory(plan["model"], plan["quantize"], plan["mem_seqs"],
                                  plan["mem_tokens"])
    res = RUNNERS[system](plan)
    res["peak_rss_mib"] = res.get("peak_rss_mib") or peak_rss_mib()
    return res


def spawn(system: str, plan: dict, timeout: float | None = None) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": str(plan["threads"])}
    cmd = [sys.executable, "-m", "qwq.benchmark", "--child", system, json.dumps(plan)]
    t = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout,
                          check=False)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        return {"error": f"{describe_exit(proc.returncode)}: "
                         f"{tail(proc.stderr or proc.stdout, 3)}"}
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
    p.add_argument("--build-peer", action="store_true",
                   help="build llama.cpp's tools for this machine (once, cached), then exit")
    p.set_defaults(func=cmd_bench)


def cmd_bench(args: argparse.Namespace) -> int:
    if args.build_peer:
        print(llama_cpp.build())
        return 0
    systems = [s for s in args.systems.split(",") if s]
    bad = [s for s in systems if s not in SYSTEMS] + \
        [t for t in args.tests.split(",") if t and t not in TESTS]
    if bad:
        raise QwQError(f"unknown system or test {bad[0]!r}; systems: {', '.join(SYSTEMS)}; "
                       f"tests: {', '.join(TESTS)}")
    result = run(make_plan(args), systems)
    print(json.dumps(result) if args.json else table(result))
    return 0

