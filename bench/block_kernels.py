"""qwq's block kernels alone: read bandwidth of a decode step's matmuls, and prefill rate.

    python bench/block_kernels.py [--threads 2]

Builds the demo model's shapes with random weights (24 layers of q|k|v 1152x896, o 896x896,
gate|up 9728x896, down 896x4864 in q5_0, and the 151936x896 head in q8_0), far more bytes than
the caches hold, so one pass streams from memory as a decode step does. Prints, per shape and for
the whole step: time at 1 token (GB/s of weights read), at 16 tokens (a step of 16 concurrent
sequences) and at 512 tokens (tokens/s), next to
torch's kernels on the same shapes (_weight_int8pack_mm for 8-bit weights at 1 token, the
w8a8 path's torch._int_mm at 512).
"""

from __future__ import annotations

import argparse

import torch

from qwq.benchmark import machine, today
from qwq.benchmark.machine import best_seconds
from qwq.kernels import blocks, kernels_available

LAYER = [("qkv", 1152, 896), ("o", 896, 896), ("gate_up", 9728, 896), ("down", 896, 4864)]
LAYERS = 24


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
          f"{'q5_0 16 tok':>13}{'q5_0 512':>10}{'_int_mm 512':>13}")
    total = {"q5": 0.0, "i8": 0.0, "q5b": 0.0, "q5p": 0.0, "i8p": 0.0}
    for name, n, k in LAYER:
        x1 = torch.randn(1, k, dtype=torch.bfloat16)
        x16 = torch.randn(16, k, dtype=torch.bfloat16)
        x512 = torch.randn(512, k, dtype=torch.bfloat16)
        x512q = torch.randint(-127, 128, (512, k), dtype=torch.int8)
        scale = torch.ones(n, dtype=torch.bfloat16)
        ws, w8 = q5[name], i8[name]
        t_q5 = best_seconds(lambda x=x1, ws=ws, n=n: [torch.ops.qwq.q5_0_linear(x, w, None, n) for w in ws])
        t_i8 = best_seconds(lambda x=x1, w8=w8, s=scale: [torch.ops.aten._weight_int8pack_mm(x, w, s)
                                                  for w in w8])
        t_q5b = best_seconds(lambda x=x16, ws=ws, n=n: [torch.ops.qwq.q5_0_linear(x, w, None, n)
                                                for w in ws])
        t_q5p = best_seconds(lambda x=x512, w=ws[0], n=n: torch.ops.qwq.q5_0_linear(x, w, None, n), 2)
        t_i8p = best_seconds(lambda x=x512q, w=w8[0]: torch._int_mm(x, w.t()), 2)
        total["q5"] += t_q5
        total["i8"] += t_i8
        total["q5b"] += t_q5b
        total["q5p"] += t_q5p * LAYERS
        total["i8p"] += t_i8p * LAYERS
        gb5 = ws[0].numel() * LAYERS / t_q5 / 1e9
        gb8 = n * k * LAYERS / t_i8 / 1e9
        print(f"{name:<10}{t_q5 / LAYERS * 1e6:>10.0f}us{gb5:>7.1f}{t_i8 / LAYERS * 1e6:>14.0f}us"
              f"{gb8:>7.1f}{t_q5b / LAYERS * 1e6:>11.0f}us{512 / t_q5p:>9.0f}/s"
              f"{512 / t_i8p:>12.0f}/s")
    x1 = torch.randn(1, 896, dtype=torch.bfloat16)
    x16 = torch.randn(16, 896, dtype=torch.bfloat16)
    t_head = best_seconds(lambda: torch.ops.qwq.q8_0_linear(x1, head, None, 151936))
    t_head16 = best_seconds(lambda: torch.ops.qwq.q8_0_linear(x16, head, None, 151936))
    print(f"{'head q8_0':<10}{t_head * 1e6:>10.0f}us{head.numel() / t_head / 1e9:>7.1f}"
          f"{'':>23}{t_head16 * 1e6:>11.0f}us")
    layer_bytes = sum(q5[name][0].numel() for name, _, _ in LAYER) * LAYERS
    step1, step16 = total["q5"] + t_head, total["q5b"] + t_head16
    print(f"decode step, 24 layers + head: q5_0/q8_0 {step1 * 1e3:.1f} ms "
          f"({(layer_bytes + head.numel()) / step1 / 1e9:.1f} GB/s); int8pack layers alone "
          f"{total['i8'] * 1e3:.1f} ms")
    print(f"16 tokens a step (16 concurrent sequences): {step16 * 1e3:.1f} ms, "
          f"{step16 / step1:.2f}x the 1-token step for 16x the tokens")
    print(f"prefill 512, 24 layers' matmuls: q5_0 {512 / total['q5p']:.0f} tok/s, "
          f"_int_mm {512 / total['i8p']:.0f} tok/s")


if __name__ == "__main__":
    main()
