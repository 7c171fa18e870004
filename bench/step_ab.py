"""The decode step of two builds of qwq's CPU kernels, alternated step by step in one decode:
git revision REV's kernels (A) against the working tree's (B), on a GGUF (the demo model by
default).

    python bench/step_ab.py [REV HEAD] [rounds 6] [threads 2] [--model F] [--new 129]

Each build is every .cpp of qwq/kernels with its headers (REV's from git, the tree's as they
are), compiled into this process under its own namespace (torch.ops.qwqA / torch.classes.qwqA,
...B). Both make the model's DecodeLayers from the same loaded weights; both must give the same
64 greedy tokens. Then in each round one greedy decode whose steps alternate between A and B
(each pair of neighbouring steps runs in the same state of a shared machine's memory bandwidth,
which on these hosts flips within seconds), measured through the engine's step as
bench/gguf_native.py measures it. Reports each round's read bandwidth (a probe before it), the
median step of each, B's speed over A's, and B's fraction of the DRAM limit (bytes a step reads
in the file's formats over the probe's bandwidth).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch.utils import cpp_extension

sys.path.insert(0, str(Path(__file__).parent))
import gguf_native

from qwq import LLM
from qwq.benchmark.qwq_runs import greedy
from qwq.kernels import ISAS, ggml
from qwq.models import resolve

KERNELS = Path(ggml.__file__).parent
ROOT = KERNELS.parents[1]


def sources(rev: str | None) -> dict[str, str]:
    """qwq/kernels' .cpp and .h files at git revision rev (None: the working tree's)."""
    if rev is None:
        return {p.name: p.read_text() for p in [*KERNELS.glob("*.cpp"), *KERNELS.glob("*.h")]}
    names = subprocess.run(["git", "ls-tree", "--name-only", f"{rev}:qwq/kernels"], cwd=ROOT,
                           check=True, capture_output=True, text=True).stdout.split()
    return {n: subprocess.run(["git", "show", f"{rev}:qwq/kernels/{n}"], cwd=ROOT, check=True,
                              capture_output=True, text=True).stdout
            for n in names if n.endswith((".cpp", ".h"))}


def build(files: dict[str, str], tag: str) -> None:
    """Every kernel source compiled as one library registering torch.ops.qwq<tag> (AVX-512)."""
    work = Path(tempfile.mkdtemp(prefix=f"step_ab_{tag}_"))
    for name, text in files.items():
        for macro in ("TORCH_LIBRARY_FRAGMENT", "TORCH_LIBRARY_IMPL", "TORCH_LIBRARY"):
            text = text.replace(f"{macro}(qwq,", f"{macro}(qwq{tag},")
        (work / name).write_text(text)
    cpp_extension.load(name=f"step_ab_{tag}", sources=sorted(str(p) for p in work.glob("*.cpp")),
                       extra_cflags=["-O3", "-fopenmp", *ISAS["avx512"][0]],
                       extra_ldflags=["-fopenmp"], is_python_module=False,
                       build_directory=str(work), verbose=False)


def decode_layers(net, namespace: str):
    """The model's DecodeLayers, made by one build's class (as Qwen2Model._decode_layers)."""
    found = [layer.ggml_decode_args() for layer in net.layers]
    ws, types, parts, inputs, biases, posts, eps = zip(*(f[0] for f in found))
    head = net.lm_head.kernel_parts() if net._fused_head else ([], [])
    return getattr(torch.classes, namespace).DecodeLayers(
        [w for each in ws for w in each], [t for each in types for t in each],
        [n for each in parts for n in each], list(inputs), list(biases), list(posts),
        net.norm.weight, *head, eps[0], *found[0][1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("rev", nargs="?", default="HEAD")
    ap.add_argument("rounds", nargs="?", type=int, default=6)
    ap.add_argument("threads", nargs="?", type=int, default=2)
    ap.add_argument("--model", default=None, help="a .gguf (default: the demo model)")
    ap.add_argument("--new", type=int, default=129, help="steps a round (A and B alternate)")
    args = ap.parse_args()
    build(sources(args.rev), "A")
    build(sources(None), "B")
    llm = LLM(args.model, max_model_len=1024, enable_prefix_caching=False,
              kv_cache_memory=256 << 20)
    engine, net = llm.engine, llm.engine.runner.model
    ids = llm.tokenizer.encode(gguf_native.PROMPT)
    llm.generate([ids], greedy(2))  # the model's own DecodeLayers made: the fused path is taken
    assert isinstance(net._ggml_layers, torch.ScriptObject), "this model's steps are not fused"
    builds = {tag: decode_layers(net, f"qwq{tag}") for tag in "AB"}
    tokens = {}
    for tag, layers in builds.items():
        net._ggml_layers = layers
        tokens[tag] = llm.generate([ids], greedy(64))[0].outputs[0].token_ids
    assert tokens["A"] == tokens["B"], "the two builds give different greedy tokens"
    nbytes = gguf_native.step_bytes(str(resolve(args.model).path))
    print(f"A: {args.rev}, B: the working tree; the same 64 greedy tokens; {args.rounds} rounds "
          f"of {args.new} steps, alternated, {args.threads} threads", flush=True)
    ratios = []
    for _ in range(args.rounds):
        bandwidth = gguf_native.read_bandwidth(2)
        torch.set_num_threads(args.threads)
        rid = engine.add_request(ids, greedy(args.new))
        engine.step()  # the prefill
        steps: dict[str, list[float]] = {"A": [], "B": []}
        i = 0
        while engine.is_active(rid):
            tag = "AB"[i % 2]
            net._ggml_layers = builds[tag]
            t = time.perf_counter()
            engine.step()
            steps[tag].append(time.perf_counter() - t)
            i += 1
        a, b = (statistics.median(steps[k]) for k in "AB")
        ratios.append(a / b)
        print(f"read {bandwidth:.0f} GB/s: A {a * 1e3:.3f} ms, B {b * 1e3:.3f} ms, B {a / b:.3f}x, "
              f"B at {nbytes / b / (bandwidth * 1e9):.3f} of the DRAM limit", flush=True)
    print(f"median {statistics.median(ratios):.3f}x")


if __name__ == "__main__":
    main()
