"""Prompt-lookup (n-gram) drafts for speculative decoding.

A reasoning model re-reads and repeats text it has seen: the prompt it quotes, its own earlier
steps. So the tokens that followed the most recent earlier occurrence of a sequence's last n
tokens are a cheap guess at what comes next. The scheduler asks for such a draft, the runner
computes the draft's positions in the same forward as the real token, and the engine keeps the
longest prefix the model itself would have produced (see LLMEngine._verify).
"""

from __future__ import annotations

import numpy as np


def propose_ngram(tokens: list[int], k: int, min_n: int, max_n: int) -> list[int]:
    """Up to k tokens that followed the most recent earlier occurrence of the last n tokens of
    tokens, for the longest n in [min_n, max_n] that occurs; [] when none does."""
    if k <= 0 or len(tokens) < min_n + 1:
        return []
    arr = np.asarray(tokens, dtype=np.int64)
    length = len(arr)
    # candidate ends: earlier positions holding the last token (the match may not be the suffix)
    ends = np.flatnonzero(arr[:-1] == arr[-1])
    for n in range(min(max_n, length - 1), min_n - 1, -1):
        starts = ends - (n - 1)
        starts = starts[starts >= 0]
        if not len(starts):
            continue
        ok = np.ones(len(starts), dtype=bool)
        for j in range(n - 1):  # compare the rest of the n-gram, last token already equal
            ok &= arr[starts + j] == arr[length - n + j]
        hits = starts[ok]
        if len(hits):
            follow = int(hits[-1]) + n
            return arr[follow: follow + k].tolist()
    return []
