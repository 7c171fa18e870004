"""What every system is asked to do: the fixed prompt and text, the sizes of a full and a quick
run, and the arithmetic shared by their scores."""

from __future__ import annotations

import math
from importlib import resources

PROMPT = ("You are a helpful assistant. Explain, step by step and in plain words, how a hash "
          "table handles collisions, and give a short Python example of one.")
FULL = {"pp": 512, "tg": 128, "batch": [4, 16, 64], "batch_tokens": 64, "ppl_window": 512,
        "ppl_windows": 0, "mem_seqs": 16, "mem_tokens": 2048, "runs": 2}
QUICK = {"pp": 64, "tg": 8, "batch": [4], "batch_tokens": 8, "ppl_window": 64,
         "ppl_windows": 1, "mem_seqs": 2, "mem_tokens": 128, "runs": 1}


def ppl_text() -> str:
    """The fixed perplexity text: docstrings of Python standard-library modules (PSF licence)."""
    return resources.files("qwq").joinpath("data/ppl.txt").read_text(encoding="utf-8")


def prompt_ids(tok, n: int, salt: int = 0) -> list[int]:
    """n token ids: the fixed prompt, then the perplexity text (salt shifts where it starts,
    so concurrent sequences differ from their first token)."""
    text = f"{salt}. {PROMPT}" if salt else PROMPT
    ids = tok.encode(text)
    if len(ids) < n:
        extra = tok.encode(ppl_text())
        start = (salt * 97) % max(1, len(extra) - n)
        ids += (extra[start:] + extra)[: n - len(ids)]
    return ids[:n]


def ppl_windows(tok, size: int, limit: int = 0) -> list[list[int]]:
    ids = tok.encode(ppl_text())
    chunks = [ids[i:i + size] for i in range(0, len(ids) - size + 1, size)]
    return chunks[:limit] if limit else chunks


def best_of(runs: int, fn) -> float:
    return min(fn() for _ in range(max(1, runs)))


def nll_to_ppl(nll: float, count: int) -> float:
    return math.exp(nll / count)



def scored(n: int) -> range:
    """The positions of an n-token window whose tokens count towards perplexity: the second
    half, each predicted from at least n / 2 tokens before it. This is llama-perplexity's rule,
    so qwq, transformers and llama.cpp are scored on the same tokens of the same windows."""
    return range(n // 2 + 1, n)
