"""Shared helpers for the benchmark scripts: they live in the package (qwq.benchmark, which
`qwq bench` runs), so the scripts and the subcommand measure the same way."""

from __future__ import annotations

import argparse
from pathlib import Path

import qwq
from qwq.benchmark import llama_cpp, load_average, machine, peak_rss_mib, ppl_text, today

# the fixed perplexity text ships with the package: qwq/data/ppl.txt
DATA = Path(qwq.__file__).parent / "data"

__all__ = ["DATA", "controlled_demo", "llama_cpp", "load_average", "machine", "peak_rss_mib",
           "ppl_text", "script_args", "today"]


def script_args(doc: str, max_tokens: int) -> argparse.Namespace:
    """--max-tokens and --json, the options every reasoning-control script takes."""
    ap = argparse.ArgumentParser(description=doc.splitlines()[0])
    ap.add_argument("--max-tokens", type=int, default=max_tokens)
    ap.add_argument("--json", default=None)
    return ap.parse_args()


def controlled_demo():
    """The demo model with the reasoning controls built for its tokenizer."""
    from qwq import LLM
    from qwq.reasoning.controls import ControlFactory
    llm = LLM()
    llm.engine.control_factory = ControlFactory.for_tokenizer(llm.tokenizer)
    return llm
