"""Perplexity of an AWQ directory under qwq's formats (BENCHMARKS.md, "AWQ checkpoints under
q5_0"). No AWQ checkpoint is on this machine, so the demo model's weights are written as one:
round-to-nearest in groups of 128, AutoAWQ's GEMM layout, the demo tokenizer (the helper
tests/test_weights_awq.py uses).

    python bench/awq.py [--formats none,q5_0,q8_0,w8a8] [--windows 4]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--formats", default="none,q5_0,q8_0,w8a8")
    p.add_argument("--windows", type=int, default=4)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    from test_weights_awq import write_awq_pair

    from qwq import LLM
    from qwq import benchmark as B
    from qwq.models import load_tokenizer
    from qwq.weights import open_checkpoint
    tok, resolved = load_tokenizer(None)
    ckpt = open_checkpoint(resolved.path)
    out = Path(tempfile.mkdtemp(prefix="qwq-awq-"))
    try:
        awq, _ = write_awq_pair(dict(ckpt.iter_tensors(torch.float32)), ckpt.config, out,
                                group=128)
        tok.save(awq)
        chunks = B.ppl_windows(tok, 512, args.windows)
        print(f"{B.today()}  {B.machine()}  AWQ (RTN, groups of 128) of the demo model")
        for fmt in args.formats.split(","):
            llm = LLM(str(awq), dtype="bfloat16", quantize=fmt, enable_prefix_caching=False)
            t = time.perf_counter()
            print(f"{fmt:6s} ppl {B.qwq_ppl(llm, chunks):.4f}  ({time.perf_counter() - t:.1f} s)",
                  flush=True)
            del llm
    finally:
        shutil.rmtree(out, ignore_errors=True)


if __name__ == "__main__":
    main()
