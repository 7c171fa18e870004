"""Stop strings over streamed text: find the first stop, and hold back text that might be the
start of one so a stream never shows a stop string it will later retract."""

from __future__ import annotations


def find_stop(text: str, stops: list[str], new_chars: int) -> tuple[int, str] | None:
    """Earliest stop string that ends inside the last new_chars characters of text."""
    best: tuple[int, str] | None = None
    for s in stops:
        i = text.find(s, max(0, len(text) - new_chars - len(s) + 1))
        if i != -1 and (best is None or i < best[0]):
            best = (i, s)
    return best


def holdback(text: str, stops: list[str]) -> int:
    """How many trailing characters of text could still grow into a stop string."""
    longest = 0
    for s in stops:
        for k in range(min(len(s) - 1, len(text)), longest, -1):
            if text.endswith(s[:k]):
                longest = k
                break
    return longest
