"""qwq's GGUF kernels (torch.ops.qwq.ggml_linear) at QwQ-32B shapes: decode read bandwidth
against the machine's, and prefill.

    python bench/ggml_kernels.py [--threads 2] [--types Q4_K,Q6_K] [--rounds 3] [--json]

For each type, random valid blocks (ggml.random_blocks) fill a 1.25 GiB pool; each shape runs
over consecutive windows of it, so every call streams its weights from memory as a decode step
does. The read bandwidth is measured in the same run, torch's sum over a 2 GiB float tensor, in
rounds interleaved with the kernels' passes (best of each), since the machine may be shared.
Columns: decode (1 token) GB/s of weights read and its fraction of that bandwidth; the same
kernel on a matrix that stays in cache, one thread (the compute ceiling per core); prefill
tokens/s through q|k|v (5120 -> 7168) at 16 and 512 tokens, next to torch's bf16 matmul and
qwq's q5_0 kernel (blocks.cpp) at the same shape.
"""

from __future__ import annotations

import argparse
import json

import torch

from qwq.benchmark import load_average, machine, today
from qwq.benchmark.machine import best_seconds
from qwq.kernels import blocks, ggml, kernels_available

# (name, out_features, in_features) of QwQ-32B's linears
SHAPES = [("qkv", 7168, 5120), ("o", 5120, 5120), ("gate_up", 55296, 5120),
          ("down", 5120, 27648), ("head", 152064, 5120)]
PREFILL = (7168, 5120)
PREFILL_TOKENS = (16, 512)
POOL_BYTES = 5 << 28  # 1.25 GiB of blocks per type: past any cache


def _best(fn, rounds: int = 1) -> float:
    return best_seconds(fn, rounds, warm=False)


def windows(pool: torch.Tensor, t: ggml.GGMLType, n: int, k: int) -> list[torch.Tensor]:
    """(n, row_bytes) views of consecutive pieces of the pool."""
    rb = t.row_bytes(k)
    count = max(1, pool.numel() // (n * rb))
    return [pool[i * n * rb:(i + 1) * n * rb].view(n, rb) for i in range(count)]


def decode_pass(t: ggml.GGMLType, ws: list[torch.Tensor], n: int, x: torch.Tensor) -> float:
    """Seconds per call, one pass over the windows."""
    return _best(lambda: [torch.ops.qwq.ggml_linear(x, w, t.id, None, n) for w in ws]) / len(ws)


def in_cache(t: ggml.GGMLType, threads: int, gen: torch.Generator) -> float:
    """GB/s of one thread at 1 token on 256 x 5120 weights (in L2), best of many short calls."""
    w = ggml.random_blocks(t, 256, 5120, gen)
    x = torch.randn(1, 5120, dtype=torch.bfloat16)
    torch.set_num_threads(1)
    sec = _best(lambda: torch.ops.qwq.ggml_linear(x, w, t.id, None, 256), 300)
    torch.set_num_threads(threads)
    return w.numel() / sec / 1e9


def run_type(t: ggml.GGMLType, ones: torch.Tensor, rounds: int, threads: int,
             gen: torch.Generator, bw: list[float]) -> dict:
    pool = ggml.random_blocks(t, POOL_BYTES // (8 * t.block_bytes), 8 * t.block, gen).view(-1)
    shapes = {name: (windows(pool, t, n, k), n, torch.randn(1, k, dtype=torch.bfloat16))
              for name, n, k in SHAPES}
    sec = {name: float("inf") for name in shapes}
    for _ in range(rounds):
        bw.append(ones.numel() * 4 / _best(lambda: ones.sum()))
        for name, (ws, n, x) in shapes.items():
            sec[name] = min(sec[name], decode_pass(t, ws, n, x))
    n, k = PREFILL
    w = windows(pool, t, n, k)[0]
    prefill = {}
    for m in PREFILL_TOKENS:
        x = torch.randn(m, k, dtype=torch.bfloat16, generator=gen)
        torch.ops.qwq.ggml_linear(x, w, t.id, None, n)
        prefill[f"pp{m}"] = m / _best(lambda x=x: torch.ops.qwq.ggml_linear(x, w, t.id, None, n),
                                     2)
    return {"decode_gb_s": {name: shapes[name][0][0].numel() / s / 1e9
                            for name, s in sec.items()},
            "in_cache_gb_s": in_cache(t, threads, gen), "prefill_tok_s": prefill}


def baselines(gen: torch.Generator) -> dict[str, dict[str, float]]:
    """Tokens/s of torch's bf16 matmul and qwq's q5_0 kernel at the prefill shape."""
    n, k = PREFILL
    w = torch.randn(n, k, generator=gen) * 0.02
    packed, wb = blocks.Q5_0.pack(w), w.to(torch.bfloat16)
    out = {"bf16_matmul": {}, "q5_0_kernel": {}}
    for m in PREFILL_TOKENS:
        x = torch.randn(m, k, dtype=torch.bfloat16, generator=gen)
        x @ wb.T
        out["bf16_matmul"][f"pp{m}"] = m / _best(lambda x=x: x @ wb.T, 2)
        torch.ops.qwq.q5_0_linear(x, packed, None, n)
        out["q5_0_kernel"][f"pp{m}"] = m / _best(
            lambda x=x: torch.ops.qwq.q5_0_linear(x, packed, None, n), 2)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--types", default=",".join(ggml.TYPES))
    ap.add_argument("--rounds", type=int, default=3, help="interleaved bandwidth/decode rounds")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if not kernels_available():
        raise SystemExit("qwq's kernels are not available on this machine")
    gen = torch.Generator().manual_seed(0)
    ones = torch.ones((2 << 30) // 4)
    ones.sum()
    bw: list[float] = []
    res = {"date": today(), "machine": machine(), "threads": args.threads,
           "load_before": load_average(), "types": {}}
    for name in args.types.split(","):
        res["types"][name] = run_type(ggml.ggml_type(name), ones, args.rounds, args.threads,
                                      gen, bw)
    del ones
    res["read_gb_s"] = max(bw) / 1e9
    res["baselines_prefill_tok_s"] = baselines(gen)
    res["load_after"] = load_average()
    print(json.dumps(res, indent=1) if args.json else report(res))


def report(res: dict) -> str:
    bw = res["read_gb_s"]
    lines = [(f"{res['date']}  {res['machine']}  threads {res['threads']}  load "
              f"{res['load_before']} -> {res['load_after']}"),
             f"read bandwidth (torch sum over 2 GiB, best of the run): {bw:.1f} GB/s"]
    names = [s[0] for s in SHAPES]
    lines.append(f"{'type':<6}" + "".join(f"{n:>15}" for n in names)
                 + f"{'in cache':>10}" + "".join(f"{'pp' + str(m):>9}" for m in PREFILL_TOKENS))
    for name, r in res["types"].items():
        cells = "".join(f"{r['decode_gb_s'][n]:>8.1f} ({r['decode_gb_s'][n] / bw:>4.0%})"
                        for n in names)
        pp = "".join(f"{r['prefill_tok_s'][f'pp{m}']:>9.0f}" for m in PREFILL_TOKENS)
        lines.append(f"{name:<6}{cells}{r['in_cache_gb_s']:>10.1f}{pp}")
    base = res["baselines_prefill_tok_s"]
    for key, label in (("bf16_matmul", "torch bf16 matmul"), ("q5_0_kernel", "qwq q5_0 kernel")):
        pp = "".join(f"{base[key][f'pp{m}']:>9.0f}" for m in PREFILL_TOKENS)
        lines.append(f"{label:<{6 + 15 * len(names) + 10}}{pp}")
    lines.append("decode: GB/s of weights read at 1 token (fraction of the read bandwidth); in "
                 "cache: 1 thread, 1 token, GB/s; pp16/pp512: prefill tok/s at 5120 -> 7168")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
