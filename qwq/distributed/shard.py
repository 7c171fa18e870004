"""One rank's shard of the Qwen2 network, loaded straight from the checkpoint.

A rank's shard is a Qwen2Model of a smaller config: heads, KV heads and the MLP width divided
by the tensor-parallel size (so its fused q|k|v and gate|up are column shards, o_proj and
down_proj row shards, and the runner's KV cache holds only this rank's KV heads), with an
embedding and output head over a slice of the vocabulary. The collectives sit at the seams:

- embedding: each rank looks up the ids in its slice (zeros elsewhere), all-reduce;
- after attention (o_proj) and after the MLP (down_proj): all-reduce of the partial sums;
- output head: each rank's logits slice is gathered to rank 0, which gets the full row.

The all-reduces are forward hooks on the Attention and MLP modules, so the model's forward and
the quantized linears (which replace the projections, not these modules) are unchanged.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from qwq.config import ModelConfig
from qwq.distributed.group import TensorParallelError, TPGroup
from qwq.distributed.steps import send_step
from qwq.model import Qwen2Model
from qwq.model.layout import expected_shapes, split_dim


def check_tp_size(cfg: ModelConfig, size: int) -> None:
    """Each rank must hold whole KV heads (and so whole query groups) and an equal MLP slice."""
    if size < 1:
        raise TensorParallelError(f"tensor_parallel_size must be at least 1, got {size}")
    if cfg.num_key_value_heads % size:
        raise TensorParallelError(
            f"tensor_parallel_size={size} does not divide this model's "
            f"num_key_value_heads={cfg.num_key_value_heads}: each rank must hold whole KV "
            f"heads; choose a size that divides {cfg.num_key_value_heads}")
    if cfg.intermediate_size % size:
        raise TensorParallelError(f"tensor_parallel_size={size} does not divide "
                                  f"intermediate_size={cfg.intermediate_size}")


def shard_config(cfg: ModelConfig, size: int) -> ModelConfig:
    """The config one rank's layers are built from; vocab_size stays whole, because the
    model's output (after the gather) is the whole row of logits."""
    check_tp_size(cfg, size)
    return cfg.replace(num_attention_heads=cfg.num_attention_heads // size,
                       num_key_value_heads=cfg.num_key_value_heads // size,
                       intermediate_size=cfg.intermediate_size // size, head_dim=cfg.head_dim)


def vocab_rows(cfg: ModelConfig, size: int) -> int:
    return -(-cfg.vocab_size // size)


def shard_tensors(ckpt, rank: int, size: int,
                  dtype: torch.dtype) -> Iterator[tuple[str, torch.Tensor]]:
    """(HF name, this rank's slice) for every tensor: only the slice is read from the file."""
    cfg = ckpt.config
    rows = vocab_rows(cfg, size)
    for name, shape in expected_shapes(cfg).items():
        if name in ("model.embed_tokens.weight", "lm_head.weight"):
            start, stop = rank * rows, min((rank + 1) * rows, cfg.vocab_size)
            part = ckpt.load_slice(name, 0, start, stop, dtype)
            if stop - start < rows:  # the last rank's slice, padded with rows never chosen
                part = torch.cat([part, part.new_zeros(rows - (stop - start), shape[1])])
            yield name, part
            continue
        dim = split_dim(name)
        if dim is None:
            yield name, ckpt.load_slice(name, 0, 0, shape[0], dtype)
            continue
        step = shape[dim] // size
        yield name, ckpt.load_slice(name, dim, rank * step, (rank + 1) * step, dtype)


class VocabParallelEmbedding(nn.Embedding):
    """Rows [start, start + num_embeddings) of the embedding; the all-reduce sums the one
    rank that holds each id with zeros from the others."""

    def __init__(self, rows: int, dim: int, tp: TPGroup):
        super().__init__(rows, dim)
        self.start, self.tp = tp.rank * rows, tp

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        local = ids - self.start
        outside = (local < 0) | (local >= self.num_embeddings)
        x = F.embedding(local.masked_fill(outside, 0), self.weight)
        x = x.masked_fill(outside.unsqueeze(-1), 0)
        dist.all_reduce(x, group=self.tp.compute)
        return x


def _all_reduce_output(module: nn.Module, args: tuple, out: torch.Tensor) -> torch.Tensor:
    dist.all_reduce(out, group=module.tp_group)
    return out


class TensorParallelQwen2(Qwen2Model):
    """A rank's shard of Qwen2Model. On rank 0 each forward first broadcasts the step's batch
    (qwq.distributed.steps) so the other ranks run the same forward; rank 0 returns the full
    logits, the others their own slice."""

    def __init__(self, config: ModelConfig, tp: TPGroup):
        super().__init__(shard_config(config, tp.size))
        self.tp, self.vocab_size = tp, config.vocab_size
        rows = vocab_rows(config, tp.size)
        self.embed_tokens = VocabParallelEmbedding(rows, config.hidden_size, tp)
        self.lm_head = nn.Linear(config.hidden_size, rows, bias=False)
        if config.tie_word_embeddings:
            self.lm_head.weight = self.embed_tokens.weight
        for layer in self.layers:
            for module in (layer.self_attn, layer.mlp):
                module.tp_group = tp.compute
                module.register_forward_hook(_all_reduce_output)

    def forward(self, input_ids, meta, kv) -> torch.Tensor:
        if self.tp.rank == 0:
            self.tp.check_alive()
        try:
            if self.tp.rank == 0:
                send_step(self.tp, input_ids, meta)
            return self._gather(super().forward(input_ids, meta, kv))
        except RuntimeError as e:  # gloo and NCCL failures (closed connection, timeout)
            raise self.tp.error_from(e) from e

    def _gather(self, local: torch.Tensor) -> torch.Tensor:
        parts = [torch.empty_like(local) for _ in range(self.tp.size)] \
            if self.tp.rank == 0 else None
        dist.gather(local.contiguous(), parts, dst=0, group=self.tp.compute)
        return torch.cat(parts, dim=-1)[:, :self.vocab_size] if self.tp.rank == 0 else local
