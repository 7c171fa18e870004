"""The process groups of a tensor-parallel run, and how rank 0 stops the other ranks.

Two process groups span the same ranks. `compute` (NCCL on CUDA, gloo on CPU) carries the
all-reduces and the logits gather inside the forward, under a short timeout (QWQ_TP_TIMEOUT,
default 60 s). `control` (always gloo, on CPU) carries rank 0's step broadcasts; the other
ranks wait on it while a server idles, so its timeout is long. A rank that dies is noticed by
the watchdog on rank 0 (when rank 0 started the ranks, see ranks.py) and by gloo's closed
connections.
"""

from __future__ import annotations

import datetime
import logging
import os
import time
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist

from qwq.errors import QwQError

log = logging.getLogger("qwq.distributed")

CONTROL_TIMEOUT = datetime.timedelta(days=30)
STOP = 0  # control-group header codes (see qwq.distributed.steps)
HEADER = 5  # a step header's length: [code, T, B, W, N]


class TensorParallelError(QwQError):
    """A rank died, or a collective between the ranks failed or timed out."""


def compute_timeout() -> datetime.timedelta:
    return datetime.timedelta(seconds=float(os.environ.get("QWQ_TP_TIMEOUT", "60")))


def torchrun_env() -> tuple[int, int, int] | None:
    """(rank, world size, local rank) when launched by torchrun (or anything that sets its
    environment), else None."""
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        return None
    return (int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]),
            int(os.environ.get("LOCAL_RANK", os.environ["RANK"])))


def rank_device(device: str | None, local_rank: int) -> torch.device:
    """Each rank's device: cuda:<local rank> on GPUs, else the CPU."""
    kind = torch.device("cuda" if device in (None, "auto") and torch.cuda.is_available()
                        else "cpu" if device in (None, "auto") else device).type
    return torch.device("cuda", local_rank) if kind == "cuda" else torch.device("cpu")


@dataclass
class TPGroup:
    rank: int
    size: int
    device: torch.device
    compute: Any = None  # the process group of the forward's collectives
    control: Any = None  # the process group of step broadcasts (gloo)
    workers: list[Any] = field(default_factory=list)  # rank 0: the RankProcess it started
    failure: str | None = None  # set by the watchdog: which rank died, how
    exit_on_failure: bool = False  # a started server: a dead rank ends this process
    closed: bool = False

    def check_alive(self) -> None:
        if self.failure:
            raise TensorParallelError(self.failure)

    def error_from(self, e: BaseException) -> TensorParallelError:
        """What a failed collective means: a dead rank, named, when the watchdog knows one."""
        deadline = time.monotonic() + 3
        while self.workers and not self.failure and time.monotonic() < deadline:
            time.sleep(0.05)
        if self.failure:
            return TensorParallelError(self.failure)
        return TensorParallelError(f"tensor-parallel collective failed on rank {self.rank} "
                                   f"(is another rank dead?): {e}")

    def close(self, graceful: bool = True) -> None:
        """Rank 0: tell the other ranks to stop (graceful: they follow its steps) and wait for
        them, else kill them (start-up failed: they may be anywhere in their start); then
        leave the process groups."""
        if self.closed:
            return
        self.closed = True
        if graceful and self.rank == 0 and not self.failure and dist.is_initialized():
            try:
                send_stop(self)
            except RuntimeError:
                pass
        for proc in self.workers:
            proc.stop(timeout=10 if graceful else 0)
        if dist.is_initialized():
            dist.destroy_process_group()
        # Free the groups here, on this thread: the watchdog thread holds this object too,
        # and a group freed by a thread while the interpreter exits aborts it (std::terminate)
        self.compute = self.control = None


def join(tp: TPGroup, store: Any = None) -> TPGroup:
    """Join the process groups (blocks until every rank has joined): through store when
    rank 0 started the ranks, else torchrun's environment (env://)."""
    if tp.device.type == "cuda":
        torch.cuda.set_device(tp.device)
    if not dist.is_initialized():
        backend = "nccl" if tp.device.type == "cuda" else "gloo"
        dist.init_process_group(backend, init_method=None if store else "env://", store=store,
                                rank=tp.rank, world_size=tp.size, timeout=compute_timeout())
    if dist.get_world_size() != tp.size:
        raise TensorParallelError(f"tensor_parallel_size={tp.size}, but the process group "
                                  f"has {dist.get_world_size()} ranks")
    tp.compute = dist.group.WORLD
    tp.control = dist.new_group(backend="gloo", timeout=CONTROL_TIMEOUT)
    if tp.device.type == "cpu":  # one share of the cores each, not all cores for every rank
        local = int(os.environ.get("LOCAL_WORLD_SIZE", tp.size))
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // local))
    return tp


def send_stop(tp: TPGroup) -> None:
    """Rank 0: the step header that tells the other ranks to stop."""
    dist.broadcast(torch.tensor([STOP] + [0] * (HEADER - 1)), 0, group=tp.control)


def shutdown(engine) -> None:
    """Stop the other ranks of a tensor-parallel engine (a no-op for a single-rank one)."""
    tp = getattr(engine.runner.model, "tp", None)
    if tp is not None:
        tp.close()
