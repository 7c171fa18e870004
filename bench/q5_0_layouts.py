"""Q5_0's two load-time layouts side by side on the demo's Q5_0 decode shapes: Q5_0x4 (each
row's blocks in chunks of four) against Q5_0x16 (rows interleaved sixteen at a time), the same
random weights, calls alternated in one process, best of the rounds; then prefill of 512 tokens
through the engine with each layout.

    python bench/q5_0_layouts.py [threads 2] [rounds 8]

Columns: GB/s of weights read at m tokens a call (24 copies of each layer, so weights stream
from memory as in a decode step), and Q5_0x16's speed over Q5_0x4's.
"""

from __future__ import annotations

import sys
import time

import torch

from qwq.kernels import ggml, kernels_available

SHAPES = [("qkv", 1152, 896), ("o", 896, 896), ("gate_up", 9728, 896)]


def main() -> None:
    threads = int(sys.argv[1]) if len(sys.argv) > 1 else 2
    rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 8
    if not kernels_available():
        raise SystemExit("needs qwq's CPU kernels")
    torch.set_num_threads(threads)
    gen = torch.Generator().manual_seed(0)
    x4 = ggml.LAYOUTS["Q5_0"]
    x16 = ggml.INTERLEAVED["Q5_0"]
    for name, rows, cols in SHAPES:
        filed = [ggml.random_blocks("Q5_0", rows, cols, gen) for _ in range(24)]
        layouts = {x4.name: [torch.ops.qwq.ggml_shuffle_chunks(w, ggml._ORDERS["Q5_0"].tolist())
                             for w in filed],
                   x16.name: [torch.ops.qwq.ggml_interleave_q5_0(w) for w in filed]}
        ids = {x4.name: x4.id, x16.name: x16.id}
        nbytes = sum(w.numel() for w in filed)
        cells = []
        for m in (1, 8, 64):
            x = torch.randn(m, cols, dtype=torch.bfloat16)
            best = dict.fromkeys(layouts, float("inf"))
            for r in range(rounds):
                for tag in (list(layouts) if r % 2 == 0 else list(layouts)[::-1]):
                    t = time.perf_counter()
                    for w in layouts[tag]:
                        torch.ops.qwq.ggml_linear(x, w, ids[tag], None, rows)
                    best[tag] = min(best[tag], time.perf_counter() - t)
            a, b = best[x4.name], best[x16.name]
            cells.append(f"m={m} {nbytes / a / 1e9:.1f}/{nbytes / b / 1e9:.1f} ({a / b:.2f}x)")
        print(f"threads {threads} {name}, GB/s {x4.name}/{x16.name}: " + "  ".join(cells),
              flush=True)
    prefill(threads)


def prefill(threads: int) -> None:
    from qwq import LLM, SamplingParams
    llms = {}
    saved = dict(ggml.INTERLEAVED)
    for tag in ("Q5_0x16", "Q5_0x4"):
        llms[tag] = LLM(None, max_model_len=2048, enable_prefix_caching=False,
                        kv_cache_memory=256 << 20)
        ggml.INTERLEAVED.clear()  # the second engine keeps Q5_0 in chunks of four
    ggml.INTERLEAVED.update(saved)
    ids = [(i * 7919) % 150000 + 100 for i in range(512)]
    params = SamplingParams(temperature=0, max_tokens=1)
    best = dict.fromkeys(llms, 0.0)
    for r in range(4):
        for tag in (list(llms) if r % 2 == 0 else list(llms)[::-1]):
            t = time.perf_counter()
            llms[tag].generate([ids], params)
            best[tag] = max(best[tag], len(ids) / (time.perf_counter() - t))
    print(f"threads {threads} demo prefill of 512 tokens, tok/s Q5_0x4/Q5_0x16: "
          f"{best['Q5_0x4']:.0f}/{best['Q5_0x16']:.0f} "
          f"({best['Q5_0x16'] / best['Q5_0x4']:.2f}x)", flush=True)


if __name__ == "__main__":
    main()
