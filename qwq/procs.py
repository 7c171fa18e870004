"""Child processes: how one ended, in words (the tensor-parallel ranks, the benchmark peers)."""

from __future__ import annotations

import signal


def describe_exit(code: int) -> str:
    """'killed by SIGSEGV (exit -11)' for a signal, 'exited with code 1' otherwise."""
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name} (exit {code})"
        except ValueError:
            return f"killed by signal {-code} (exit {code})"
    return f"exited with code {code}"
