"""The decode step's one kernel call as it is (DecodeLayers.step: the layers made once, rope's
lookups, both norms and the head inside) against the call it replaced (commit 005e35c: every
layer's ~170 tensors passed from Python to ggml_decode_layers each step, rope's factors, the
first and final norms, the pick of rows and the head as separate torch calls), on the demo model.

    python bench/decode_call_ab.py [rounds 6] [threads 2]

The old decoder.cpp is compiled from git (torch.ops.qwqOld, as bench/ggml_ab.py builds a
kernel file) and calls this tree's other kernels, so only the call and the Python around it
differ. Both forwards must give the same greedy tokens. Then, in each round, one 200-token
greedy decode whose steps alternate between the two forwards: each pair of neighbouring steps
runs in the same state of a shared machine's memory bandwidth, which on these hosts flips
within seconds. Reports each round's median step of each and the ratio.
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
import gguf_native
from ggml_ab import build

from qwq import LLM
from qwq.benchmark.qwq_runs import greedy
from qwq.kernels import ggml
from qwq.model.rope import rope_factors

OLD = "005e35c"


def old_forward(net, op):
    """005e35c's Qwen2Model.forward for a decode step, on its ggml_decode_layers."""
    found = [layer.ggml_decode_args() for layer in net.layers]
    ws, types, parts, inputs, biases, posts, eps = zip(*(f[0] for f in found))
    before = ([w for each in ws for w in each], [t for each in types for t in each],
              [n for each in parts for n in each], list(biases), list(posts), list(inputs[1:]),
              eps[0])
    after = found[0][1]
    new = net.forward

    def forward(input_ids, meta, kv):
        if not meta.decode_only:
            return new(input_ids, meta, kv)
        emb = net.embed_tokens
        x = ggml.rows(emb.raw, emb.qtype, input_ids, emb.dtype)
        cos, sin = rope_factors(*net.rotary.cos_sin(meta.positions, max(meta.context_lens)),
                                x.dtype)
        h = net.layers[0].input_layernorm(x)
        net._decode_layers(x, meta, kv)  # (its checks, as the old forward made them)
        x, h = op.ggml_decode_layers(x, h, *before, cos, sin, kv.k, kv.v, meta.slot_mapping,
                                     meta.block_tables, meta.context_lens_t, kv.block_size,
                                     *after)
        x = net.norm(x[meta.logits_indices])
        return net.lm_head(x.float())

    return forward


def main() -> None:
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 6
    threads = int(sys.argv[2]) if len(sys.argv) > 2 else 2
    src = Path(tempfile.mkdtemp(prefix="decode_call_old_"))
    (src / "decoder.cpp").write_bytes(subprocess.run(
        ["git", "show", f"{OLD}:qwq/kernels/decoder.cpp"], check=True, capture_output=True,
        cwd=Path(__file__).parent).stdout)
    op = build(str(src), "Old", source="decoder.cpp")
    llm = LLM(None, max_model_len=2048, enable_prefix_caching=False, kv_cache_memory=256 << 20)
    engine, net = llm.engine, llm.engine.runner.model
    ids = llm.tokenizer.encode(gguf_native.PROMPT)
    llm.generate([ids], greedy(2))  # the DecodeLayers made
    forwards = {"new": net.forward, "old": old_forward(net, op)}
    tokens = {}
    for name, f in forwards.items():
        net.forward = f
        tokens[name] = llm.generate([ids], greedy(64))[0].outputs[0].token_ids
    assert tokens["new"] == tokens["old"], "the two forwards disagree"
    print(f"same 64 greedy tokens; {rounds} rounds of 200 steps, alternated, {threads} threads")
    ratios = []
    for _ in range(rounds):
        bandwidth = gguf_native.read_bandwidth(2)
        torch.set_num_threads(threads)
        rid = engine.add_request(ids, greedy(200))
        engine.step()  # the prefill
        steps: dict[str, list[float]] = {"new": [], "old": []}
        i = 0
        while engine.is_active(rid):
            name = "new" if i % 2 == 0 else "old"
            net.forward = forwards[name]
            t = time.perf_counter()
            engine.step()
            steps[name].append(time.perf_counter() - t)
            i += 1
        new, old = (statistics.median(steps[k]) for k in ("new", "old"))
        ratios.append(old / new)
        print(f"read {bandwidth:.0f} GB/s: step {new * 1e3:.3f} ms, before {old * 1e3:.3f} ms, "
              f"{old / new:.3f}x ({(old - new) * 1e3:.3f} ms saved)", flush=True)
    net.forward = forwards["new"]
    print(f"median {statistics.median(ratios):.3f}x")


if __name__ == "__main__":
    main()
