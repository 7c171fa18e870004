"""The runner: turns a scheduled batch into tensors, runs the model over the paged KV cache,
and samples. It owns every tensor; it makes no policy decisions."""

from __future__ import annotations

import torch

from qwq.engine.sampler import Sample, sample
from qwq.engine.scheduler import SchedulerOutput
from qwq.engine.sequence import Sequence
from qwq.model import AttentionMetadata, KVCache, Qwen2Model


class ModelRunner:
    def __init__(self, model: Qwen2Model, num_blocks: int, block_size: int,
                 kv_dtype: torch.dtype, device: torch.device | str = "cpu"):
        cfg = model.config
        self.model = model
        self.device = torch.device(device)
        self.block_size = block_size
        self.kv = KVCache(cfg.num_hidden_layers, num_blocks, block_size, cfg.num_key_value_heads,
                          cfg.head_dim, kv_dtype, self.device)
        self.generators: dict[int, torch.Generator] = {}

    def prepare(self, batch: SchedulerOutput) -> tuple[torch.Tensor, AttentionMetadata,
                                                        list[Sequence]]:
        ids: list[int] = []
        positions: list[int] = []
        slots: list[int] = []
        logits_idx: list[int] = []
        sampled: list[Sequence] = []
        bs = self.block_size
        for seq, n in zip(batch.seqs, batch.num_new):
            start = seq.num_computed
            ids += seq.token_ids[start:start + n]
            pos = range(start, start + n)
            positions += pos
            slots += [seq.block_ids[p // bs] * bs + p % bs for p in pos]
            if start + n == seq.num_tokens:  # the chunk reaches the end: a token is due
                logits_idx.append(len(ids) - 1)
                sampled.append(seq)
        ctx = [s.num_computed + n for s, n in zip(batch.seqs, batch.num_new)]
        width = max(len(s.block_ids) for s in batch.seqs)
        tables = [s.block_ids + [0] * (width - len(s.block_ids)) for s in batch.seqs]
        dev = self.device
        meta = AttentionMetadata(
            positions=torch.tensor(positions, dtype=torch.long, device=dev),
            slot_mapping=torch.tensor(slots, dtype=torch.long, device=dev),
            query_lens=list(batch.num_new), context_lens=ctx,
            block_tables=torch.tensor(tables, dtype=torch.long, device=dev),
            context_lens_t=torch.tensor(ctx, dtype=torch.long, device=dev),
            logits_indices=torch.tensor(logits_idx, dtype=torch.long, device=dev))
        return torch.tensor(ids, dtype=torch.long, device=dev), meta, sampled

    @torch.inference_mode()
    def execute(self, batch: SchedulerOutput,
                eos_ids: tuple[int, ...]) -> list[tuple[Sequence, Sample]]:
        """Run one step; returns a sample for each sequence whose chunk reached its end."""
        input_ids, meta, sampled = self.prepare(batch)
        logits = self.model(input_ids, meta, self.kv)
        if not sampled:
            return []
        return list(zip(sampled, sample(logits, sampled, eos_ids, self.generators)))

    def add_generator(self, seq: Sequence) -> None:
        if seq.params.seed is not None:
            g = torch.Generator(device=self.device)
            g.manual_seed(seq.params.seed + seq.index)
            self.generators[seq.seq_id] = g

    def drop_generator(self, seq: Sequence) -> None:
        self.generators.pop(seq.seq_id, None)
