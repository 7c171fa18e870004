"""Two builds of ggml.cpp side by side on the demo GGUF's decode shapes: how a change to the
GGUF kernels (ggml.cpp, ggml_formats.h, ggml_kquants.h, isa.h) moves each.

    mkdir -p /tmp/a /tmp/b
    git show HEAD~1:qwq/kernels/ggml.cpp > /tmp/a/ggml.cpp   # and each header, likewise
    cp qwq/kernels/ggml.cpp qwq/kernels/*.h /tmp/b/
    python bench/ggml_ab.py /tmp/a /tmp/b [threads 2] [rounds 10]

Each directory is compiled under its own op namespace (torch.ops.qwqA, torch.ops.qwqB) into
this one process (AVX-512 build). Calls alternate, A then B, over random blocks of the demo's
shapes and types (24 copies of each layer, so weights stream from memory as in a decode step),
best of the rounds; then one thread on 128 x 5120 weights that stay in cache. On a shared
machine, runs taken one after the other cannot be compared; alternating calls in one process
can. Columns: GB/s of weights read, A/B, and B's speed over A's.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch.utils import cpp_extension

from qwq.kernels import ISAS, ggml

TYPES = {n: ggml.ggml_type(n) for n in ("Q5_0x16", "Q8_0x4", "Q4_K", "Q6_K")}
# (name, [(type, rows)], inputs, copies): the demo's q|k|v, o, gate|up and its two down types
SHAPES = [("qkv", [("Q5_0x16", 896), ("Q5_0x16", 128), ("Q8_0x4", 128)], 896, 24),
          ("o", [("Q5_0x16", 896)], 896, 24), ("gate_up", [("Q5_0x16", 9728)], 896, 24),
          ("down6", [("Q6_K", 896)], 4864, 12), ("down4", [("Q4_K", 896)], 4864, 12),
          ("head", [("Q8_0x4", 151936)], 896, 1)]


def build(src: str, tag: str, source: str = "ggml.cpp"):
    """src's `source` (one of qwq/kernels' .cpp files) and headers compiled as
    torch.ops.qwq<tag>; headers src lacks come from qwq/kernels."""
    work = Path(tempfile.mkdtemp(prefix=f"kernel_ab_{tag}_"))
    for header in [*Path(ggml.__file__).parent.glob("*.h"), *Path(src).glob("*.h")]:
        shutil.copy(header, work)
    text = (Path(src) / source).read_text()
    for macro in ("TORCH_LIBRARY_FRAGMENT", "TORCH_LIBRARY_IMPL"):
        text = text.replace(f"{macro}(qwq,", f"{macro}(qwq{tag},")
    (work / source).write_text(text)
    cpp_extension.load(name=f"kernel_ab_{Path(source).stem}_{tag}", sources=[str(work / source)],
                       extra_cflags=["-O3", "-fopenmp", *ISAS["avx512"][0]],
                       extra_ldflags=["-fopenmp"], is_python_module=False,
                       build_directory=str(work), verbose=False)
    return getattr(torch.ops, f"qwq{tag}")


def alternate(ops: dict, rounds: int, fn) -> dict:
    """Best seconds of fn(op) per build, A first in even rounds and B first in odd ones."""
    best = {}
    for r in range(rounds):
        for tag, op in (list(ops.items()) if r % 2 == 0 else list(ops.items())[::-1]):
            t = time.perf_counter()
            fn(op)
            best[tag] = min(best.get(tag, float("inf")), time.perf_counter() - t)
    return best


def main() -> None:
    if len(sys.argv) < 3:
        raise SystemExit(__doc__)
    ops = {"A": build(sys.argv[1], "A"), "B": build(sys.argv[2], "B")}
    threads = int(sys.argv[3]) if len(sys.argv) > 3 else 2
    rounds = int(sys.argv[4]) if len(sys.argv) > 4 else 10
    torch.set_num_threads(threads)
    gen = torch.Generator().manual_seed(0)
    x = {k: torch.randn(1, k).bfloat16() for k in (896, 4864)}
    cells, total = [], {"A": 0.0, "B": 0.0}
    for name, parts, k, copies in SHAPES:
        ws = [[ggml.random_blocks(TYPES[t], rows, k, gen) for t, rows in parts]
              for _ in range(copies)]
        ids = [TYPES[t].id for t, _ in parts]
        n = sum(rows for _, rows in parts)
        def calls(op, ws=ws, ids=ids, n=n, xk=x[k]):
            return [op.ggml_linear_parts(xk, w, ids, None, n) for w in ws]

        best = alternate(ops, rounds, calls)
        nbytes = sum(w.numel() for layer in ws for w in layer)
        total["A"] += best["A"]
        total["B"] += best["B"]
        cells.append(f"{name} {nbytes / best['A'] / 1e9:.1f}/{nbytes / best['B'] / 1e9:.1f} "
                     f"({best['A'] / best['B']:.2f}x)")
    print(f"threads {threads}, GB/s A/B: " + "  ".join(cells) +
          f"  | step {total['A'] * 1e3:.2f}/{total['B'] * 1e3:.2f} ms "
          f"({total['A'] / total['B']:.3f}x)", flush=True)
    torch.set_num_threads(1)
    cells = []
    for name, t in TYPES.items():
        w = ggml.random_blocks(t, 128, 5120, gen)
        xx = torch.randn(1, 5120).bfloat16()
        def calls(op, w=w, xx=xx, t=t):
            return [op.ggml_linear(xx, w, t.id, None, 128) for _ in range(200)]

        best = alternate(ops, 6, calls)
        cells.append(f"{name} {w.numel() * 200 / best['A'] / 1e9:.1f}/"
                     f"{w.numel() * 200 / best['B'] / 1e9:.1f} ({best['A'] / best['B']:.2f}x)")
    print("one thread, weights in cache, GB/s A/B: " + "  ".join(cells), flush=True)


if __name__ == "__main__":
    main()
