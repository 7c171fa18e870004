"""qwq's GGUF kernels (torch.ops.qwq.ggml_linear) at QwQ-32B shapes: decode read bandwidth
against the machine's, and a 512-token prefill.

    python bench/ggml_kernels.py [--threads 2] [--types Q4_K,Q6_K] [--json]

For each type, random valid blocks (ggml.random_blocks) fill a buffer larger than the caches;
each shape runs over consecutive windows of it, so every call streams its weights from memory as
a decode step does. The read bandwidth is measured in the same run (torch's sum over a 2 GiB
float tensor). Decode (1 token) reports GB/s of weights read and its fraction of that bandwidth;
prefill times 512 tokens through q|k|v (5120 -> 7168), next to torch's bf16 matmul and qwq's q5_0
kernel (blocks.cpp) at the same shape.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from qwq.benchmark import load_average, machine, today
from qwq.kernels import blocks, ggml, kernels_available

# (name, out_features, in_features) of QwQ-32B's linears; the head is 152064 x 5120
SHAPES = [("qkv", 7168, 5120), ("o", 5120, 5120), ("gate_up", 55296, 5120),
          ("down", 5120, 27648), ("head", 152064, 5120)]
PREFILL = ("qkv", 7168, 5120)
POOL_BYTES = 5 << 28  # 1.25 GiB of blocks per type: past any cache


def best(fn, rounds: int = 3) -> float:
    fn()
    times = []
    for _ in range(rounds):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def read_bandwidth(nbytes: int = 2 << 30) -> float:
    """Bytes/s of torch's sum over a float tensor of nbytes (best of 3)."""
    x = torch.ones(nbytes // 4)
    return nbytes / best(lambda: x.sum())


def windows(pool: torch.Tensor, t: ggml.GGMLType, n: int, k: int) -> list[torch.Tensor]:
    """(n, row_bytes) views of consecutive pieces of the pool, at least two."""
    rb = t.row_bytes(k)
    count = max(1, pool.numel() // (n * rb))
    return [pool[i * n * rb:(i + 1) * n * rb].view(n, rb) for i in range(count)]


def decode(t: ggml.GGMLType, pool: torch.Tensor) -> dict[str, dict[str, float]]:
    out = {}
    for name, n, k in SHAPES:
        ws = windows(pool, t, n, k)
        x = torch.randn(1, k, dtype=torch.bfloat16)
        sec = best(lambda ws=ws, x=x, n=n: [torch.ops.qwq.ggml_linear(x, w, t.id, None, n)
                                           for w in ws]) / len(ws)
        out[name] = {"us": sec * 1e6, "gb_s": ws[0].numel() / sec / 1e9}
    return out


def prefill(t: ggml.GGMLType, pool: torch.Tensor, x: torch.Tensor) -> float:
    _, n, k = PREFILL
    w = windows(pool, t, n, k)[0]
    return x.shape[0] / best(lambda: torch.ops.qwq.ggml_linear(x, w, t.id, None, n), 2)


def baselines(x: torch.Tensor) -> dict[str, float]:
    """Tokens/s of torch's bf16 matmul and qwq's q5_0 kernel at the prefill shape."""
    _, n, k = PREFILL
    w = torch.randn(n, k) * 0.02
    packed = blocks.Q5_0.pack(w)
    wb = w.to(torch.bfloat16)
    m = x.shape[0]
    return {"bf16_matmul": m / best(lambda: x @ wb.T, 2),
            "q5_0_kernel": m / best(lambda: torch.ops.qwq.q5_0_linear(x, packed, None, n), 2)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--types", default=",".join(ggml.TYPES))
    ap.add_argument("--tokens", type=int, default=512, help="prefill tokens")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if not kernels_available():
        raise SystemExit("qwq's kernels are not available on this machine")
    gen = torch.Generator().manual_seed(0)
    bw = read_bandwidth()
    x = torch.randn(args.tokens, PREFILL[2], dtype=torch.bfloat16, generator=gen)
    res = {"date": today(), "machine": machine(), "threads": args.threads,
           "load": load_average(), "read_gb_s": bw / 1e9, "types": {}}
    for name in args.types.split(","):
        t = ggml.ggml_type(name)
        pool = ggml.random_blocks(t, POOL_BYTES // (8 * t.block_bytes), 8 * t.block, gen).view(-1)
        res["types"][name] = {"decode": decode(t, pool), "prefill_tok_s": prefill(t, pool, x)}
        del pool
    res["baselines_prefill_tok_s"] = baselines(x)
    if args.json:
        print(json.dumps(res, indent=1))
    else:
        report(res)


def report(res: dict) -> None:
    bw = res["read_gb_s"]
    print(f"{res['date']}  {res['machine']}  threads {res['threads']}  load {res['load']}")
    print(f"read bandwidth (torch sum over 2 GiB): {bw:.1f} GB/s")
    names = [s[0] for s in SHAPES]
    print(f"{'type':<6}" + "".join(f"{n:>16}" for n in names) + f"{'prefill tok/s':>15}")
    for name, r in res["types"].items():
        cells = "".join(f"{r['decode'][n]['gb_s']:>8.1f} ({r['decode'][n]['gb_s'] / bw:>4.0%})"
                        for n in names)
        print(f"{name:<6}{cells}{r['prefill_tok_s']:>15.0f}")
    print("decode cells: GB/s of weights read at 1 token (fraction of the read bandwidth)")
    base = res["baselines_prefill_tok_s"]
    print(f"prefill {PREFILL[2]} -> {PREFILL[1]}, 512 tokens, same shape: torch bf16 matmul "
          f"{base['bf16_matmul']:.0f} tok/s, qwq q5_0 kernel {base['q5_0_kernel']:.0f} tok/s")


if __name__ == "__main__":
    main()
