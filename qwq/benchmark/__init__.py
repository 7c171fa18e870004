"""`qwq bench` and the bench/*.py scripts: qwq next to its peers, measured the same way.

  machine.py    where a run happened: CPU, load, this process's memory
  workloads.py  what every system is asked: the prompt, the text, full and quick sizes
  qwq_runs.py   qwq's measurements, through the one engine
  llama_cpp.py  llama.cpp's own tools, built once per machine, each run in a child process
  hf.py         transformers' Qwen2ForCausalLM on the same weights
  report.py     the table of ratios
  cli.py        `qwq bench`: one child process per system

Tests (`qwq bench --tests`):
  pp      prefill of a 512-token prompt (tok/s; llama.cpp: llama-bench pp512)
  tg      decode of 128 tokens at batch 1 (tok/s after the first; llama.cpp: llama-bench tg128)
  batch   aggregate decode throughput at 4/16/64 concurrent sequences of 64 tokens each
  ppl     perplexity on qwq/data/ppl.txt (shipped with the package), windows of 512, each
          window's second half scored (llama-perplexity's rule)
  mem     qwq serving 16 sequences of 2K tokens: peak RSS against weights + KV cache
"""

from qwq.benchmark.hf import (
                              run_transformers,
                              sync,
                              transformers_decode,
                              transformers_model,
                              transformers_ppl,
                              transformers_prefill,
)
from qwq.benchmark.llama_cpp import PeerError
from qwq.benchmark.machine import (
                              cpu_model,
                              load_average,
                              machine,
                              peak_rss_mib,
                              reset_peak_rss,
                              rss_mib,
                              today,
)
from qwq.benchmark.qwq_runs import (
                              greedy,
                              qwq_batch,
                              qwq_decode,
                              qwq_llm,
                              qwq_ppl,
                              qwq_prefill,
                              qwq_serving_memory,
                              run_qwq,
)
from qwq.benchmark.report import table
from qwq.benchmark.workloads import (
                              FULL,
                              PROMPT,
                              QUICK,
                              best_of,
                              nll_to_ppl,
                              ppl_text,
                              ppl_windows,
                              prompt_ids,
                              scored,
)

__all__ = ["FULL", "PROMPT", "QUICK", "PeerError", "best_of", "cpu_model", "greedy",
           "load_average", "machine", "nll_to_ppl", "peak_rss_mib", "ppl_text", "ppl_windows",
           "prompt_ids", "qwq_batch", "qwq_decode", "qwq_llm", "qwq_ppl", "qwq_prefill",
           "qwq_serving_memory", "reset_peak_rss", "rss_mib", "run_qwq", "run_transformers",
           "scored", "sync", "table", "today", "transformers_decode", "transformers_model",
           "transformers_ppl", "transformers_prefill"]
