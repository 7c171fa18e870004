"""The ranks of a tensor-parallel run: how they start, how rank 0 watches them, how they stop.

Two process groups span the same ranks. `compute` (NCCL on CUDA, gloo on CPU) carries the
all-reduces and the logits gather inside the forward, under a short timeout (QWQ_TP_TIMEOUT,
default 60 s). `control` (always gloo, on CPU) carries rank 0's step broadcasts; the other
ranks wait on it while a server idles, so its timeout is long. A rank that dies is noticed by
the watchdog on rank 0 (when rank 0 started the ranks) and by gloo's closed connections.
"""

from __future__ import annotations

import datetime
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist

from qwq.errors import QwQError

log = logging.getLogger("qwq.distributed")

CONTROL_TIMEOUT = datetime.timedelta(days=30)
STOP = 0  # control-group header codes (see qwq.distributed.steps)


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
    workers: list[Any] = field(default_factory=list)  # rank 0: the processes it started
    failure: str | None = None  # set by the watchdog: which rank died, how
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

    def close(self) -> None:
        """Rank 0: tell the other ranks to stop, wait for them, leave the process groups."""
        if self.closed:
            return
        self.closed = True
        if self.rank == 0 and not self.failure:
            from qwq.distributed.steps import send_stop
            try:
                send_stop(self)
            except RuntimeError:
                pass
        for proc in self.workers:
            proc.join(timeout=10)
            if proc.is_alive():
                proc.kill()
        if dist.is_initialized():
            dist.destroy_process_group()


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


def spawn_workers(tp: TPGroup, target: Callable, args: tuple) -> Any:
    """Rank 0: start ranks 1..size-1 as fresh processes running target(rank, size, port,
    parent pid, *args), and the store they meet at; returns the store."""
    import torch.multiprocessing as mp
    store = dist.TCPStore("127.0.0.1", 0, tp.size, is_master=True, wait_for_workers=False,
                          timeout=compute_timeout())
    ctx = mp.get_context("spawn")
    for rank in range(1, tp.size):
        proc = ctx.Process(target=target, args=(rank, tp.size, store.port, os.getpid(), *args),
                           name=f"qwq-tp-rank{rank}", daemon=True)
        proc.start()
        print(f"qwq: tensor-parallel rank {rank} runs as pid {proc.pid}", file=sys.stderr,
              flush=True)
        tp.workers.append(proc)
    return store


def worker_store(rank: int, size: int, port: int) -> Any:
    """A spawned rank: connect to rank 0's store and say so."""
    store = dist.TCPStore("127.0.0.1", port, size, is_master=False, timeout=compute_timeout())
    store.set(f"qwq/started/{rank}", "1")
    return store


def wait_for_workers(tp: TPGroup, store: Any) -> None:
    """Rank 0: wait until every spawned rank has reached the store, failing as soon as one
    dies (they import torch first: seconds)."""
    keys = [f"qwq/started/{r}" for r in range(1, tp.size)]
    deadline = time.monotonic() + compute_timeout().total_seconds()
    while not store.check(keys):
        tp.check_alive()
        if time.monotonic() > deadline:
            raise TensorParallelError("the tensor-parallel ranks did not start in time")
        time.sleep(0.05)


def _how(exitcode: int) -> str:
    if exitcode < 0:
        try:
            return f"was killed by {signal.Signals(-exitcode).name}"
        except ValueError:
            return f"was killed by signal {-exitcode}"
    return f"exited with code {exitcode}"


def watch(tp: TPGroup, exit_process: bool) -> None:
    """Rank 0: a thread that notices a rank's death within a fraction of a second. It records
    the failure (the engine's next or current step raises TensorParallelError naming the rank);
    with exit_process (the server) it also stops this process a moment later, so a collective
    that would hang (NCCL) cannot keep a dead server listening."""

    def loop() -> None:
        while not tp.closed:
            for rank, proc in enumerate(tp.workers, start=1):
                if proc.exitcode is not None and not tp.closed:
                    tp.failure = (f"tensor-parallel rank {rank} (pid {proc.pid}) "
                                  f"{_how(proc.exitcode)}; the engine cannot continue")
                    print(f"qwq: error: {tp.failure}", file=sys.stderr, flush=True)
                    if exit_process:
                        time.sleep(2)  # the failing step reports the error to open requests
                        for other in tp.workers:
                            if other.is_alive():
                                other.kill()
                        print("qwq: the server stops", file=sys.stderr, flush=True)
                        os._exit(1)
                    return
            time.sleep(0.2)

    threading.Thread(target=loop, name="qwq-tp-watchdog", daemon=True).start()


def watch_parent(parent_pid: int) -> None:
    """A spawned rank: exit when the process that started it is gone (even after SIGKILL)."""

    def loop() -> None:
        while True:
            if os.getppid() != parent_pid:
                os._exit(1)
            time.sleep(0.5)

    threading.Thread(target=loop, name="qwq-tp-parent", daemon=True).start()
