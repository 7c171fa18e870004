"""What a benchmark records about where it ran: the machine, its load, this process's memory."""

from __future__ import annotations

import datetime
import os
import platform
import resource
import time
from collections.abc import Callable
from pathlib import Path


def cpu_model() -> str:
    """The CPU's model name (lscpu's), 'unknown CPU' where /proc/cpuinfo is missing."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown CPU"


def machine() -> str:
    return f"{os.cpu_count()} cores, {cpu_model()}, {platform.system()}"


def load_average() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "?"


def today() -> str:
    return datetime.date.today().isoformat()


def _proc_status_mib(field: str) -> float | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def peak_rss_mib() -> float:
    """This process's resident-set high-water mark (VmHWM), in MiB."""
    peak = _proc_status_mib("VmHWM")
    return peak if peak is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def rss_mib() -> float:
    """This process's resident set now (VmRSS), in MiB; 0 where /proc is missing."""
    return _proc_status_mib("VmRSS") or 0.0


def reset_peak_rss() -> bool:
    """Restart the high-water mark (Linux: clear_refs 5), so a peak excludes model loading."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def best_seconds(fn: Callable[[], object], rounds: int = 3, warm: bool = True) -> float:
    """The fastest of `rounds` timed calls of fn (after one untimed call when warm)."""
    if warm:
        fn()
    times = []
    for _ in range(rounds):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)
