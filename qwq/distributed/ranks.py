"""The processes of ranks 1..N-1 that rank 0 starts, and how each side watches the other.

Each rank runs `python -m qwq.distributed.worker` (a fresh interpreter of qwq's own), never the
caller's main module: multiprocessing's spawn re-runs that module, so a script without an
`if __name__ == "__main__":` guard, `python -`, or a notebook could not start ranks. Rank 0
reads each rank's stderr, passes it on line by line and keeps its end, so that a rank that
dies while starting is reported with its own last words. A rank exits when rank 0 is gone.
"""

from __future__ import annotations

import collections
import json
import os
import site
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import torch.distributed as dist

from qwq.distributed.group import TensorParallelError, TPGroup, compute_timeout
from qwq.procs import describe_exit

TAIL_LINES = 20  # lines of a rank's stderr kept for the error that reports its death


class RankProcess:
    """One rank that rank 0 started: its process and the end of its stderr."""

    def __init__(self, rank: int, argv: list[str], env: dict[str, str]):
        self.rank = rank
        # stdin: the caller's input (a chat, `python -`'s script) is not the rank's to read
        self.popen = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL,
                                      stderr=subprocess.PIPE)
        self.pid = self.popen.pid
        self.tail: collections.deque[str] = collections.deque(maxlen=TAIL_LINES)
        self.reader = threading.Thread(target=self._pass_on_stderr, daemon=True,
                                       name=f"qwq-tp-rank{rank}-stderr")
        self.reader.start()

    def _pass_on_stderr(self) -> None:
        for raw in self.popen.stderr:
            line = raw.decode("utf-8", "replace").rstrip("\n")
            self.tail.append(line)
            if sys.stderr is not None:
                print(f"[rank {self.rank}] {line}", file=sys.stderr, flush=True)

    @property
    def exitcode(self) -> int | None:
        return self.popen.poll()

    def how_it_ended(self) -> str:
        code = self.popen.returncode
        return "is still running" if code is None else describe_exit(code)

    def stderr_tail(self) -> str:
        """The last lines the rank wrote to stderr (once it has exited: all of them)."""
        self.reader.join(timeout=2)
        return "\n".join(self.tail)

    def stop(self, timeout: float) -> None:
        """Wait up to timeout seconds for the rank to exit, then kill it."""
        try:
            self.popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait()
        self.reader.join(timeout=2)


def qwq_root() -> str:
    """The folder this process imported the qwq package from."""
    return str(Path(__file__).resolve().parents[2])  # .../qwq/distributed/ranks.py


def rank_argv(rank: int, size: int, port: int, options: dict[str, Any]) -> list[str]:
    """The command line of a rank: the rendezvous (rank 0's store on this host), the options
    every rank builds its shard from (JSON), and where rank 0's qwq lies (a rank must run
    the same code)."""
    return [sys.executable, "-m", "qwq.distributed.worker", "--rank", str(rank),
            "--size", str(size), "--port", str(port), "--parent-pid", str(os.getpid()),
            "--options", json.dumps(options), "--qwq-root", qwq_root()]


def rank_env() -> dict[str, str]:
    """This process's environment, where the rank imports the same qwq as rank 0 (first on
    its path): the caller may have found qwq through its script's folder or a sys.path edit,
    which a fresh interpreter would not see, and find another qwq installed."""
    env = dict(os.environ, QWQ_NO_PROGRESS="1", PYTHONSAFEPATH="1")  # no cwd on sys.path
    root = qwq_root()
    paths = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    if root not in site.getsitepackages():  # (a site folder would shadow the stdlib)
        env["PYTHONPATH"] = os.pathsep.join([root] + [p for p in paths if p != root])
    return env


def start_ranks(tp: TPGroup, options: dict[str, Any]) -> Any:
    """Rank 0: start ranks 1..size-1 and the store they meet at; returns the store."""
    store = dist.TCPStore("127.0.0.1", 0, tp.size, is_master=True, wait_for_workers=False,
                          timeout=compute_timeout())
    env = rank_env()
    for rank in range(1, tp.size):
        proc = RankProcess(rank, rank_argv(rank, tp.size, store.port, options), env)
        tp.workers.append(proc)
        print(f"qwq: tensor-parallel rank {rank} runs as pid {proc.pid}", file=sys.stderr,
              flush=True)
    return store


def worker_store(rank: int, size: int, port: int) -> Any:
    """A started rank: connect to rank 0's store and say so."""
    store = dist.TCPStore("127.0.0.1", port, size, is_master=False, timeout=compute_timeout())
    store.set(f"qwq/started/{rank}", "1")
    return store


def wait_for_ranks(tp: TPGroup, store: Any) -> None:
    """Rank 0: wait until every started rank has reached the store, failing as soon as one
    dies (they import torch first: seconds)."""
    keys = [f"qwq/started/{r}" for r in range(1, tp.size)]
    deadline = time.monotonic() + compute_timeout().total_seconds()
    while not store.check(keys):
        tp.check_alive()
        if time.monotonic() > deadline:
            raise TensorParallelError("the tensor-parallel ranks did not start in time")
        time.sleep(0.05)


def watch(tp: TPGroup) -> None:
    """Rank 0: a thread that notices a rank's death within a fraction of a second. It records
    the failure (the engine's next or current step raises TensorParallelError naming the rank);
    once tp.exit_on_failure is set (a server that has started) it also stops this process a
    moment later, so a collective that would hang (NCCL) cannot keep a dead server listening."""

    def loop() -> None:
        while not tp.closed:
            for proc in tp.workers:
                if proc.exitcode is not None and not tp.closed:
                    tp.failure = (f"tensor-parallel rank {proc.rank} (pid {proc.pid}) "
                                  f"{proc.how_it_ended()}; the engine cannot continue")
                    print(f"qwq: error: {tp.failure}", file=sys.stderr, flush=True)
                    if tp.exit_on_failure:
                        exit_server(tp)
                    return
            time.sleep(0.2)

    threading.Thread(target=loop, name="qwq-tp-watchdog", daemon=True).start()


def exit_server(tp: TPGroup) -> None:
    time.sleep(2)  # the failing step reports the error to open requests
    for other in tp.workers:
        if other.exitcode is None:
            other.popen.kill()
    print("qwq: the server stops", file=sys.stderr, flush=True)
    os._exit(1)


def dead_rank_error(tp: TPGroup) -> TensorParallelError | None:
    """Rank 0, while starting: the error naming a rank that has died, ending with what it
    wrote to stderr (the reason is there: a traceback, a fatal error); None if all live."""
    for proc in tp.workers:
        if proc.exitcode is not None:
            tail = proc.stderr_tail().strip() or "(nothing)"
            return TensorParallelError(
                f"tensor-parallel rank {proc.rank} (pid {proc.pid}) {proc.how_it_ended()} "
                f"while starting; the engine cannot continue. The end of its stderr:\n{tail}")
    return None


def watch_parent(parent_pid: int) -> None:
    """A started rank: exit when the process that started it is gone (even after SIGKILL)."""

    def loop() -> None:
        while True:
            if os.getppid() != parent_pid:
                os._exit(1)
            time.sleep(0.5)

    threading.Thread(target=loop, name="qwq-tp-parent", daemon=True).start()
