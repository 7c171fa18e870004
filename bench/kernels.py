"""qwq's block kernels alone: read bandwidth of a decode step's matmuls, and prefill rate.

    python bench/kernels.py [--threads 2]

Builds the demo model's shapes with random weights (24 layers of q|k|v 1152x896, o 896x896,
gate|up 9728x896, down 896x4864 in q5_0, and the 151936x896 head in q8_0), far more bytes than
the caches hold, so one pass streams from memory as a decode step does. Prints, per shape and for
the whole step: time at 1 token (GB/s of weights read) and at 512 tokens (tokens/s), next to
torch's kernels on the same shapes (_weight_int8pack_mm for 8-bit weights at 1 token, the
w8a8 path's torch._int_mm at 512).
"""

from __future__ import annotations

import argparse
import time

import torch

from qwq.benchmark import machine, today
from qwq.kernels import blocks, kernels_available

LAYER = [("qkv", 1152, 896), ("o", 896, 896), ("gate_up", 9728, 896), ("down", 896, 4864)]
LAYERS = 24


def best(fn, rounds: int = 3) -> float:
    fn()
    times = []
    for _ in range(rounds):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if not kernels_available():
        raise SystemExit("qwq's kernels are not available on this machine")
    print(f"{today()}  {machine()}  threads {args.threads}")
    q5 = {name: [blocks.Q5_0.pack(torch.randn(n, k) * 0.02) for _ in range(LAYERS)]
          for name, n, k in LAYER}
    head = blocks.Q8_0.pack(torch.randn(151936, 896) * 0.02)
    i8 = {name: [torch.randint(-127, 128, (n, k), dtype=torch.int8) for _ in range(LAYERS)]
          for name, n, k in LAYER}
    print(f"{'shape':<10}{'q5_0 1 tok':>12}{'GB/s':>7}{'int8pack 1 tok':>16}{'GB/s':>7}"
          f"{'q5_0 512':>10}{'_int_mm 512':>13}")
    total = {"q5": 0.0, "i8": 0.0, "q5p": 0.0, "i8p": 0.0}
    for name, n, k in LAYER:
        x1 = torch.randn(1, k, dtype=torch.bfloat16)
        x512 = torch.randn(512, k, dtype=torch.bfloat16)
        x512q = torch.randint(-127, 128, (512, k), dtype=torch.int8)
        scale = torch.ones(n, dtype=torch.bfloat16)
        t_q5 = best(lambda: [torch.ops.qwq.q5_0_linear(x1, w, None, n) for w in q5[name]])
        t_i8 = best(lambda: [torch.ops.aten._weight_int8pack_mm(x1, w, scale) for w in i8[name]])
        t_q5p = best(lambda: torch.ops.qwq.q5_0_linear(x512, q5[name][0], None, n), 2)
        t_i8p = best(lambda: torch._int_mm(x512q, i8[name][0].t()), 2)
        total["q5"] += t_q5
        total["i8"] += t_i8
        total["q5p"] += t_q5p * LAYERS
        total["i8p"] += t_i8p * LAYERS
        gb5 = q5[name][0].numel() * LAYERS / t_q5 / 1e9
        gb8 = n * k * LAYERS / t_i8 / 1e9
        print(f"{name:<10}{t_q5 / LAYERS * 1e6:>10.0f}us{gb5:>7.1f}{t_i8 / LAYERS * 1e6:>14.0f}us"
              f"{gb8:>7.1f}{512 / t_q5p:>9.0f}/s{512 / t_i8p:>12.0f}/s")
    x1 = torch.randn(1, 896, dtype=torch.bfloat16)
    t_head = best(lambda: torch.ops.qwq.q8_0_linear(x1, head, None, 151936))
    print(f"{'head q8_0':<10}{t_head * 1e6:>10.0f}us{head.numel() / t_head / 1e9:>7.1f}")
    layer_bytes = sum(q5[name][0].numel() for name, _, _ in LAYER) * LAYERS
    print(f"decode step, 24 layers + head: q5_0/q8_0 {(total['q5'] + t_head) * 1e3:.1f} ms "
          f"({(layer_bytes + head.numel()) / (total['q5'] + t_head) / 1e9:.1f} GB/s); "
          f"int8pack layers alone {total['i8'] * 1e3:.1f} ms")
    print(f"prefill 512, 24 layers' matmuls: q5_0 {512 / total['q5p']:.0f} tok/s, "
          f"_int_mm {512 / total['i8p']:.0f} tok/s")


if __name__ == "__main__":
    main()
