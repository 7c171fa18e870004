"""A rank that rank 0 started: `python -m qwq.distributed.worker --rank R --size N --port P
--parent-pid PID --options JSON` (see ranks.py). It joins rank 0 at its store on this host,
builds its shard and follows rank 0's steps until rank 0 says stop or goes away."""

from __future__ import annotations

import argparse
import json
import signal

from qwq.distributed.group import TPGroup, join, rank_device
from qwq.distributed.launch import RankOptions, follow
from qwq.distributed.ranks import qwq_root, watch_parent, worker_store


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m qwq.distributed.worker",
                                     description="one tensor-parallel rank started by rank 0")
    parser.add_argument("--rank", type=int, required=True)
    parser.add_argument("--size", type=int, required=True)
    parser.add_argument("--port", type=int, required=True, help="rank 0's store, on 127.0.0.1")
    parser.add_argument("--parent-pid", type=int, required=True,
                        help="rank 0's pid: this rank exits when that process is gone")
    parser.add_argument("--options", type=json.loads, required=True,
                        help="RankOptions as JSON: checkpoint path, dtype, device, engine config")
    parser.add_argument("--qwq-root", required=True, help="where rank 0 imported qwq from")
    args = parser.parse_args(argv)
    if not 0 < args.rank < args.size:
        parser.error(f"--rank must lie in 1..{args.size - 1} (rank 0 started this one)")
    if args.qwq_root != qwq_root():  # two versions of the code would disagree on each step
        parser.error(f"this rank imported qwq from {qwq_root()}, rank 0 from {args.qwq_root}")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    watch_parent(args.parent_pid)
    # Ctrl-C in a terminal reaches the whole process group: rank 0 decides when ranks stop
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    opts = RankOptions.from_json(args.options)
    store = worker_store(args.rank, args.size, args.port)
    tp = join(TPGroup(args.rank, args.size, rank_device(opts.device, args.rank)), store)
    follow(tp, opts)


if __name__ == "__main__":
    main()
