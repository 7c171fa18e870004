"""Two builds of layers.cpp side by side on decode attention: how a change to the attention
kernel moves it, with the cache rows in memory (as in a decode step, where the layer's weights
stream through the caches between one layer's attention and the next's) and in cache.

    mkdir -p /tmp/a /tmp/b
    git show HEAD~1:qwq/kernels/layers.cpp > /tmp/a/layers.cpp
    cp qwq/kernels/layers.cpp /tmp/b/
    python bench/attention_ab.py /tmp/a /tmp/b [threads 2] [rounds 6]

Each directory's layers.cpp (headers from it, else qwq/kernels) is compiled under its own op
namespace into this one process, as bench/ggml_ab.py does for ggml.cpp. One sequence of the
demo's attention (14 query heads, 2 kv heads, head_dim 64, a bfloat16 cache) over 128, 512 and
2048 positions whose blocks lie in a shuffled order, as a served cache holds them; 24 layers'
caches taken in turn. "memory": a 24 MB sweep before each call; "cache": none. Calls alternate
between the builds, best of the rounds; the last column says whether their outputs are the
same bits.
"""

from __future__ import annotations

import sys
import time

import numpy as np
import torch
from ggml_ab import build

BS, HEADS, KV_HEADS, HEAD_DIM, LAYERS = 16, 14, 2, 64, 24


def main() -> None:
    if len(sys.argv) < 3:
        raise SystemExit(__doc__)
    ops = {"A": build(sys.argv[1], "A", "layers.cpp"), "B": build(sys.argv[2], "B", "layers.cpp")}
    threads = int(sys.argv[3]) if len(sys.argv) > 3 else 2
    rounds = int(sys.argv[4]) if len(sys.argv) > 4 else 6
    torch.set_num_threads(threads)
    gen = torch.Generator().manual_seed(0)
    sweep = np.ones(6 << 20, dtype=np.float32)  # 24 MB
    blocks = 2048 // BS
    shape = (LAYERS, blocks * BS, KV_HEADS, HEAD_DIM)
    kc = torch.randn(shape, generator=gen).bfloat16()
    vc = torch.randn(shape, generator=gen).bfloat16()
    q = torch.randn(1, HEADS, HEAD_DIM, generator=gen).bfloat16()
    tables = torch.randperm(blocks, generator=gen).view(1, -1)
    scale = HEAD_DIM ** -0.5
    for positions in (128, 512, 2048):
        lens = torch.tensor([positions])
        cells = []
        for cold in (True, False):
            best = {}
            for r in range(rounds):
                for tag, op in (list(ops.items()) if r % 2 == 0 else list(ops.items())[::-1]):
                    total = 0.0
                    for i in range(60):
                        if cold:
                            np.add(sweep, 1.0, out=sweep)
                        t = time.perf_counter()
                        op.decode_attention(q, kc[i % LAYERS], vc[i % LAYERS], tables, lens, BS,
                                            scale)
                        total += time.perf_counter() - t
                    best[tag] = min(best.get(tag, float("inf")), total / 60)
            cells.append(f"{'memory' if cold else 'cache'} {best['A'] * 1e6:.1f}/"
                         f"{best['B'] * 1e6:.1f} us ({best['A'] / best['B']:.2f}x)")
        same = torch.equal(*(op.decode_attention(q, kc[0], vc[0], tables, lens, BS, scale)
                             for op in ops.values()))
        print(f"{positions} positions, A/B: " + "  ".join(cells) +
              ("  same bits" if same else "  DIFFERENT outputs"), flush=True)


if __name__ == "__main__":
    main()
