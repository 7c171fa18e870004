"""Shared helpers for the benchmark scripts: they live in the package (qwq.benchmark, which
`qwq bench` runs), so the scripts and the subcommand measure the same way."""

from __future__ import annotations

from pathlib import Path

import qwq
from qwq.benchmark import llama_cpp, load_average, machine, peak_rss_mib, ppl_text, today

# the fixed perplexity text ships with the package: qwq/data/ppl.txt
DATA = Path(qwq.__file__).parent / "data"

__all__ = ["DATA", "llama_cpp", "load_average", "machine", "peak_rss_mib", "ppl_text", "today"]
