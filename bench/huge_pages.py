"""The same GGUF blocks streamed from 4 KB pages and from 2 MB (transparent huge) pages, calls
alternated in one process: what `ggml.computed`'s huge-page mappings are worth per format.

    python bench/huge_pages.py [threads 2] [rounds 12]

The demo's decode shapes (24 copies of its gate|up in Q5_0x4, 12 of its down in Q4_K and in
Q6_K, its 152K-row head in Q8_0x4), random blocks. The 4 KB copy comes from torch's allocator
(glibc, no huge-page advice), the 2 MB one from an anonymous mapping advised MADV_HUGEPAGE, as
ggml.computed maps the weights it rearranges (ggml.cpp: streamed_bytes). Columns: GB/s of
weights read, 4 KB / 2 MB, and the ratio; AnonHugePages shows the kernel gave them.
"""

from __future__ import annotations

import mmap
import sys
import time
from pathlib import Path

import torch

from qwq.kernels import ggml, kernels_available

SHAPES = [("Q5_0x4", 9728, 896, 24), ("Q4_K", 896, 4864, 12), ("Q6_K", 896, 4864, 12),
          ("Q8_0x4", 151936, 896, 1)]


def in_huge_pages(t: torch.Tensor, keep: list) -> torch.Tensor:
    """A copy of t in an anonymous mapping advised MADV_HUGEPAGE, from a 2 MB boundary."""
    huge = 2 << 20
    m = mmap.mmap(-1, t.numel() + 2 * huge, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    whole = torch.frombuffer(m, dtype=torch.uint8)
    skip = -whole.data_ptr() % huge
    m.madvise(mmap.MADV_HUGEPAGE, skip, len(m) - skip - huge)
    keep.append(m)
    out = whole[skip: skip + t.numel()].view(t.shape)
    out.copy_(t)
    return out


def anon_huge_mb() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("AnonHugePages:"):
            return int(line.split()[1]) // 1024
    return 0


def main() -> None:
    if not kernels_available():
        raise SystemExit("qwq's CPU kernels are not available here")
    threads = int(sys.argv[1]) if len(sys.argv) > 1 else 2
    rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 12
    torch.set_num_threads(threads)
    gen = torch.Generator().manual_seed(0)
    keep: list = []
    for name, rows, k, copies in SHAPES:
        t = ggml.ggml_type(name)
        small = [ggml.random_blocks(t, rows, k, gen) for _ in range(copies)]
        huge = [in_huge_pages(w, keep) for w in small]
        x = torch.randn(1, k).bfloat16()
        best = {"4k": float("inf"), "2m": float("inf")}
        for r in range(rounds):
            pairs = [("4k", small), ("2m", huge)]
            for tag, ws in (pairs if r % 2 == 0 else pairs[::-1]):
                s = time.perf_counter()
                for w in ws:
                    ggml.linear(x, w, name, None, rows)
                best[tag] = min(best[tag], time.perf_counter() - s)
        nbytes = sum(w.numel() for w in small)
        print(f"{name} ({nbytes / 1e6:.0f} MB): 4 KB {nbytes / best['4k'] / 1e9:.1f} GB/s, "
              f"2 MB {nbytes / best['2m'] / 1e9:.1f} GB/s ({best['4k'] / best['2m']:.2f}x); "
              f"AnonHugePages {anon_huge_mb()} MB", flush=True)


if __name__ == "__main__":
    main()
