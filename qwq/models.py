"""From a model name to a ready engine, on one rank or on N: `load_engine`. The plan (what to
load, how) and the building blocks live in qwq.compose; the tensor-parallel start-up in
qwq.distributed.launch. The names below are qwq's public loading API."""

from __future__ import annotations

import os

import torch

from qwq.compose import (
    DTYPES,
    PRESET_HUB_IDS,
    LoadPlan,
    ResolvedModel,
    build_engine,
    build_model,
    check_engine_config,
    engine_for,
    load_draft,
    load_tokenizer,
    num_kv_blocks,
    pick_device,
    pick_dtype,
    plan_load,
    resolve,
    tokenizer_of,
)
from qwq.config import EngineConfig
from qwq.distributed.launch import load_tp_engine

__all__ = ["DTYPES", "PRESET_HUB_IDS", "LoadPlan", "ResolvedModel", "build_model",
           "engine_for", "load_draft", "load_engine", "load_tokenizer", "num_kv_blocks",
           "pick_device", "pick_dtype", "plan_load", "resolve", "tokenizer_of"]


def load_engine(model: str | os.PathLike | None = None, *, dtype: str | torch.dtype = "auto",
                device: str | None = "auto", engine_config: EngineConfig | None = None,
                tensor_parallel_size: int = 1, exit_on_rank_failure: bool = False):
    """Everything needed to serve a model: (engine, tokenizer, resolved name). With
    tensor_parallel_size > 1 this process is rank 0 of that many (see qwq.distributed)."""
    cfg = check_engine_config(engine_config or EngineConfig(), tensor_parallel_size)
    if tensor_parallel_size != 1:
        return load_tp_engine(model, dtype=dtype, device=device, engine_config=cfg,
                              tensor_parallel_size=tensor_parallel_size,
                              exit_on_rank_failure=exit_on_rank_failure)
    plan = plan_load(model, dtype=dtype, device=device, engine_config=cfg)
    engine, tokenizer = build_engine(plan)
    return engine, tokenizer, plan.resolved
