"""Starting a tensor-parallel engine: rank 0 holds the engine, the other ranks follow it.

Rank 0 (the process that called `qwq.LLM(..., tensor_parallel_size=N)` or `qwq serve
--tensor-parallel-size N`) starts ranks 1..N-1 itself (`python -m qwq.distributed.worker`, see
ranks.py), or, under torchrun, every rank runs the same command and ranks other than 0 follow
rank 0 and exit when it stops. Every rank makes qwq.compose's plan (checkpoint, dtype, format:
the ranks rank 0 starts get its settled dtype and format), builds only its shard from it
(compose.build_model), quantizes it and allocates a KV cache for its heads; the block count is agreed (the smallest any rank
affords) so that rank 0's block tables mean the same slots everywhere. Rank 0 builds the usual
engine (scheduler, runner, sampler) over its shard. If rank 0's start fails, the ranks it
started are killed before the error is raised.
"""

from __future__ import annotations

import atexit
import dataclasses
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from qwq.compose import LoadPlan, build_network, engine_for, num_kv_blocks, plan_load, resolve
from qwq.config import EngineConfig
from qwq.distributed.group import TensorParallelError, TPGroup, join, rank_device, torchrun_env
from qwq.distributed.ranks import dead_rank_error, start_ranks, wait_for_ranks, watch
from qwq.distributed.steps import serve_steps
from qwq.engine.runner import ModelRunner
from qwq.heap import weights_in_own_mappings
from qwq.model.kv_quant import kv_storage_dtype
from qwq.model.quant import quantize_model


@dataclass
class RankOptions:
    """What every rank needs to build its shard the same way (sent to started ranks as JSON
    on their command line)."""

    path: str
    dtype: str | torch.dtype
    device: str | None
    engine_config: EngineConfig

    def to_json(self) -> dict[str, Any]:
        # extra is rank 0's engine's business; the ranks only build shards and KV caches
        cfg = {k: v for k, v in dataclasses.asdict(self.engine_config).items() if k != "extra"}
        dtype = str(self.dtype) if isinstance(self.dtype, torch.dtype) else self.dtype
        return {"path": self.path, "dtype": dtype, "device": self.device, "engine_config": cfg}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> RankOptions:
        dtype = data["dtype"]
        if isinstance(dtype, str) and dtype.startswith("torch."):  # a torch.dtype given by the caller, e.g. torch.float32
            dtype = getattr(torch, dtype.removeprefix("torch."))
        return cls(data["path"], dtype, data["device"], EngineConfig(**data["engine_config"]))


def load_tp_engine(model, *, dtype: str | torch.dtype = "auto", device: str | None = "auto",
                   engine_config: EngineConfig | None = None, tensor_parallel_size: int = 2,
                   exit_on_rank_failure: bool = False):
    """(engine, tokenizer, resolved name) on rank 0, over N ranks; ranks other than 0 (under
    torchrun) follow rank 0's steps here and exit the process when it stops."""
    size = tensor_parallel_size
    resolved = resolve(model)
    # absolute: a started rank need not share this process's working directory's meaning
    path = str(Path(resolved.path).resolve())
    cfg = engine_config or EngineConfig()
    env = torchrun_env()
    if env is not None:
        rank, world, local_rank = env
        if world != size:
            raise TensorParallelError(f"tensor_parallel_size={size}, but torchrun started "
                                      f"{world} ranks (WORLD_SIZE); they must agree")
        tp = join(TPGroup(rank, size, rank_device(device, local_rank)))
        if rank != 0:
            follow(tp, RankOptions(path, dtype, device, cfg))
            raise SystemExit(0)
    else:
        tp = TPGroup(0, size, rank_device(device, 0))
    plan = plan_load(resolved, dtype=dtype, device=tp.device, engine_config=cfg,
                     tensor_parallel_size=size)
    # started ranks take rank 0's settled dtype and format
    opts = RankOptions(path, plan.dtype, device, plan.engine_config)
    try:
        if env is None:
            start_and_join(tp, opts)
        engine, tokenizer = build_engine(plan, tp)
    except BaseException as e:  # Ctrl-C included: no rank may outlive a failed start
        err = startup_error(tp, e)
        if err is e:
            raise
        raise err from e
    tp.exit_on_failure = exit_on_rank_failure
    atexit.register(tp.close)
    return engine, tokenizer, resolved


def start_and_join(tp: TPGroup, opts: RankOptions) -> None:
    """Rank 0: start ranks 1..N-1, watch them, and form the process groups with them."""
    store = start_ranks(tp, opts.to_json())
    watch(tp)
    wait_for_ranks(tp, store)
    join(tp, store)


def startup_error(tp: TPGroup, e: BaseException) -> BaseException:
    """Rank 0's start failed with e: kill the ranks it started; the error to raise, which
    names a rank that died and ends with its stderr (the reason is there, not here)."""
    if isinstance(e, RuntimeError):  # a collective failed: is a rank dead?
        e = tp.error_from(e)
    dead = dead_rank_error(tp)
    tp.close(graceful=False)
    return dead or e


def build_engine(plan: LoadPlan, tp: TPGroup):
    """Rank 0: its shard, the tokenizer and the engine over them."""
    tokenizer = plan.tokenizer()
    with weights_in_own_mappings():
        net, cfg = build_rank(plan, tp)
        # every rank runs each step eagerly: the other ranks mirror rank 0's steps op by op
        engine = engine_for(net, tokenizer, cfg, plan.ckpt.generation_config,
                            decode_graphs=False)
    return engine, tokenizer


def build_rank(plan: LoadPlan, tp: TPGroup):
    """This rank's shard, and the engine config every rank shares (the plan's, with the KV
    block count agreed: the smallest any rank affords)."""
    net = build_network(plan, tp)
    cfg = plan.engine_config
    blocks = torch.tensor([num_kv_blocks(net.config, cfg, plan.dtype, tp.device)])
    dist.all_reduce(blocks, op=dist.ReduceOp.MIN, group=tp.control)
    return net, dataclasses.replace(cfg, num_kv_blocks=int(blocks))


def follow(tp: TPGroup, opts: RankOptions) -> None:
    """A rank other than 0: build the shard and its KV cache, then run rank 0's steps. The
    checkpoint (its mapping, its parsed metadata) is released once the shard is loaded."""
    with weights_in_own_mappings():
        plan = plan_load(opts.path, dtype=opts.dtype, device=tp.device,
                         engine_config=opts.engine_config, tensor_parallel_size=tp.size)
        net, cfg = build_rank(plan, tp)
        del plan
        quantize_model(net, cfg.quantize, cfg.head_quantize)
        dtype = net.embed_tokens.weight.dtype
        kv_dtype = kv_storage_dtype(cfg.kv_cache_dtype, dtype)  # as rank 0's engine_for
        runner = ModelRunner(net, cfg.num_kv_blocks, cfg.block_size, kv_dtype, tp.device)
    try:
        serve_steps(tp, net, runner.kv)
    except RuntimeError as e:  # rank 0 went away: say so in one line, not a traceback
        print(f"qwq: tensor-parallel rank {tp.rank} stops: {e}", file=sys.stderr, flush=True)
        raise SystemExit(1) from None
    dist.destroy_process_group()
