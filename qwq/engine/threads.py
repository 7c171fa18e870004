"""Which threads compute. torch's CPU kernels (and qwq's) run on OpenMP, and each thread that
enters a parallel region gets a team of OpenMP workers of its own, kept until that thread
exits. libgomp spins at its barriers only while it manages no more threads than there are
cores; past that it sleeps on a futex after ~100 spins, and each of a step's hundreds of
parallel regions pays a wake-up. A process where one thread loads the model and another steps
the engine holds two teams, so a server decoded a third slower than the same engine offline.
The thread that hands the engine over releases its workers here."""

from __future__ import annotations

import ctypes
import functools
import logging

log = logging.getLogger(__name__)

_OMP_PAUSE_SOFT = 1  # omp_pause_resource_t: release threads, keep nothing else warm


@functools.cache
def _openmp_pause():
    """omp_pause_resource_all of the OpenMP runtime torch loaded, or None (another runtime,
    or none: nothing to release)."""
    import torch  # noqa: F401  (loads the OpenMP runtime with global symbols)
    try:
        return ctypes.CDLL(None).omp_pause_resource_all
    except (AttributeError, OSError):
        return None


def release_openmp_workers() -> bool:
    """Release the calling thread's OpenMP workers (OpenMP 5's omp_pause_resource_all, which
    libgomp applies to the calling thread's pool). A later parallel region on this thread
    starts a new team; True if the runtime released them."""
    pause = _openmp_pause()
    if pause is None:
        return False
    pause.argtypes, pause.restype = [ctypes.c_int], ctypes.c_int
    ok = pause(_OMP_PAUSE_SOFT) == 0
    if not ok:
        log.debug("qwq: the OpenMP runtime kept this thread's workers")
    return ok
