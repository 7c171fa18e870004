"""Counters of what the reasoning controls did (loops cut, budgets spent, guard decisions).

Process-wide and thread-safe; the server exports snapshot() to its metrics endpoint.
Names: loop_detected{action}, reasoning_closed{reason}, guard_decision{stage,decision,category},
guard_seconds{stage} (a running sum).
"""

from __future__ import annotations

import threading
from collections import Counter

_lock = threading.Lock()
_counts: Counter[tuple[str, tuple[tuple[str, str], ...]]] = Counter()


def inc(name: str, amount: float = 1, **labels: str) -> None:
    key = (name, tuple(sorted((k, str(v)) for k, v in labels.items())))
    with _lock:
        _counts[key] += amount


def snapshot() -> list[tuple[str, dict[str, str], float]]:
    """[(name, labels, value)] for every counter touched so far."""
    with _lock:
        return [(name, dict(labels), value) for (name, labels), value in sorted(_counts.items())]


def value(name: str, **labels: str) -> float:
    key = (name, tuple(sorted((k, str(v)) for k, v in labels.items())))
    with _lock:
        return _counts.get(key, 0)


def reset() -> None:
    with _lock:
        _counts.clear()
