"""Per-rank resident memory with tensor parallelism: TP=N against TP=1, after loading.

    python bench/tp_memory.py                          # demo model, TP 1 and 2, quantize auto
    python bench/tp_memory.py --model DIR --sizes 1,2 --quantize none --dtype bfloat16

Each size loads in a fresh process (high-water marks do not mix), on CPU with gloo, with a
16 MiB KV cache per rank so the weights dominate. Then every rank's VmRSS, RssAnon (its own
memory, not the mapped checkpoint's page cache) and VmHWM (the peak, loading included) are read
from /proc/<pid>/status, and the bytes of rank 0's model tensors are summed. Rank 0 also holds
the tokenizer and the engine; rank 1 is the plainest view of one shard. A process that only
imported torch and qwq gives the baseline.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys

KV_BYTES = 16 << 20
FIELDS = ("VmRSS", "RssAnon", "VmHWM")


def status(pid: int) -> dict[str, int]:
    """MiB of each field of /proc/<pid>/status."""
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in FIELDS:
                out[key] = int(value.split()[0]) // 1024
    return out


def child(args: argparse.Namespace) -> None:
    import qwq  # noqa: F401 - the baseline counts the import
    if args.child == 0:
        print(json.dumps({"ranks": [status(os.getpid())], "tensor_mib": 0}))
        return
    from qwq import LLM
    llm = LLM(args.model, tensor_parallel_size=args.child, dtype=args.dtype,
              quantize=args.quantize, device="cpu", kv_cache_memory=KV_BYTES,
              max_model_len=2048)
    gc.collect()
    model = llm.engine.runner.model
    tensors = sum(t.numel() * t.element_size()
                  for t in [*model.parameters(), *model.buffers()])
    pids = [os.getpid()] + [p.pid for p in getattr(getattr(model, "tp", None), "workers", [])]
    print(json.dumps({"ranks": [status(p) for p in pids], "tensor_mib": tensors >> 20}))
    llm.shutdown()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="qwq-demo")
    p.add_argument("--sizes", default="1,2")
    p.add_argument("--dtype", default="auto")
    p.add_argument("--quantize", default="auto")
    p.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child is not None:
        return child(args)
    sys.path.insert(0, os.path.dirname(__file__))
    from common import machine, today
    print(f"date {today()}; machine {machine()}; model {args.model}; dtype {args.dtype}; "
          f"quantize {args.quantize}; KV cache {KV_BYTES >> 20} MiB per rank\n")
    print("| TP | rank | VmRSS MiB | RssAnon MiB | VmHWM MiB | rank 0 model tensors MiB |")
    print("| --- | --- | --- | --- | --- | --- |")
    for size in [0] + [int(s) for s in args.sizes.split(",")]:
        cmd = [sys.executable, __file__, "--child", str(size), "--model", args.model,
               "--dtype", args.dtype, "--quantize", args.quantize]
        env = {**os.environ, "QWQ_NO_PROGRESS": "1"}
        out = subprocess.run(cmd, capture_output=True, text=True, check=True, env=env)
        result = json.loads(out.stdout.strip().splitlines()[-1])
        label = "baseline (import only)" if size == 0 else str(size)
        for rank, s in enumerate(result["ranks"]):
            print(f"| {label} | {rank} | {s['VmRSS']} | {s['RssAnon']} | {s['VmHWM']} | "
                  f"{result['tensor_mib'] if rank == 0 and size else ''} |", flush=True)


if __name__ == "__main__":
    main()
