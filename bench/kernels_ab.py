"""Two builds of qwq's block kernels side by side: how a change to blocks.cpp moves each shape.

    python bench/kernels_ab.py OLD.cpp NEW.cpp [tokens ...]    (default tokens: 1 16)
    git show HEAD~1:qwq/kernels/blocks.cpp > /tmp/old.cpp
    python bench/kernels_ab.py /tmp/old.cpp qwq/kernels/blocks.cpp 1 4 16 512

Each file is compiled under its own op namespace (torch.ops.qwqA, torch.ops.qwqB) and loaded
into this one process. Calls alternate, A then B, for the demo model's shapes (24 copies of each
layer, so weights stream from memory as in a real step), and the best of 8 rounds is
compared. On a shared machine whose speed swings with its neighbours, runs taken one after the
other cannot be compared; alternating calls in one process can. Both builds get the same packed
weights (blocks.py's layout): an older layout's numbers come out wrong, but its timings hold.
Both compile against the working tree's simd.h and isa.h; builds go to temporary folders, left in /tmp.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch.utils import cpp_extension

from qwq.kernels import ISAS, blocks

KERNELS = Path(blocks.__file__).parent
SHAPES = [("qkv", 1152, 896, blocks.Q5_0), ("o", 896, 896, blocks.Q5_0),
          ("gate_up", 9728, 896, blocks.Q5_0), ("down", 896, 4864, blocks.Q5_0),
          ("head", 151936, 896, blocks.Q8_0)]


def build(source: str, tag: str):
    """source compiled as torch.ops.qwq<tag>."""
    work = Path(tempfile.mkdtemp(prefix=f"qwq_ab_{tag}_"))
    for header in ("simd.h", "isa.h"):
        shutil.copy(KERNELS / header, work)
    text = Path(source).read_text()
    for macro in ("TORCH_LIBRARY_FRAGMENT", "TORCH_LIBRARY_IMPL"):
        text = text.replace(f"{macro}(qwq,", f"{macro}(qwq{tag},")
    (work / "blocks.cpp").write_text(text)
    cpp_extension.load(name=f"qwq_ab_{tag}", sources=[str(work / "blocks.cpp")],
                       extra_cflags=["-O3", "-fopenmp", *ISAS["avx512"][0]], extra_ldflags=["-fopenmp"], is_python_module=False,
                       build_directory=str(work), verbose=False)
    return getattr(torch.ops, f"qwq{tag}")


def main() -> None:
    if len(sys.argv) < 3:
        raise SystemExit(__doc__)
    torch.set_num_threads(2)
    ops = {"A": build(sys.argv[1], "A"), "B": build(sys.argv[2], "B")}
    tokens = [int(a) for a in sys.argv[3:]] or [1, 16]
    weights = {name: [fmt.pack(torch.randn(n, k) * 0.02)
                      for _ in range(1 if name == "head" else 24)]
               for name, n, k, fmt in SHAPES}
    for m in tokens:
        x = {k: torch.randn(m, k).bfloat16() for k in (896, 4864)}
        best = {(t, name): float("inf") for t in ops for name, *_ in SHAPES}
        for round_ in range(8):
            order = list(ops.items()) if round_ % 2 == 0 else list(ops.items())[::-1]
            for tag, op in order:  # A first in even rounds, B first in odd ones
                for name, n, k, fmt in SHAPES:
                    fn = getattr(op, f"{fmt.name}_linear")
                    t0 = time.perf_counter()
                    for w in weights[name]:
                        fn(x[k], w, None, n)
                    best[tag, name] = min(best[tag, name], time.perf_counter() - t0)
        cells = [f"{name} {best['A', name] * 1e3:.1f}/{best['B', name] * 1e3:.1f}ms "
                 f"({best['B', name] / best['A', name]:.2f})" for name, *_ in SHAPES]
        a = sum(v for (t, _), v in best.items() if t == "A")
        b = sum(v for (t, _), v in best.items() if t == "B")
        print(f"tokens {m}: " + "  ".join(cells) + f"  step {a * 1e3:.1f}/{b * 1e3:.1f} ms "
              f"({b / a:.2f})", flush=True)


if __name__ == "__main__":
    main()
