"""Rank 0 tells the other ranks what to run: each step's batch, as two gloo broadcasts.

The header is [code, T, B, W, N] (code 1: a forward, 0: stop); the payload packs, as int64,
the T token ids, T positions, T slot numbers, B query lengths, B context lengths, the B x W
block table and the N logits rows: everything AttentionMetadata holds. The other ranks rebuild
the metadata and run the same model forward over their own KV cache.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from qwq.distributed.group import HEADER, STOP, TPGroup
from qwq.model import AttentionMetadata

FORWARD = 1


def send_step(tp: TPGroup, input_ids: torch.Tensor, meta: AttentionMetadata) -> None:
    B, W = meta.block_tables.shape
    header = torch.tensor([FORWARD, input_ids.numel(), B, W, meta.logits_indices.numel()])
    payload = torch.cat([t.reshape(-1).cpu() for t in (
        input_ids, meta.positions, meta.slot_mapping, torch.tensor(meta.query_lens),
        meta.context_lens_t, meta.block_tables, meta.logits_indices)]).long()
    dist.broadcast(header, 0, group=tp.control)
    dist.broadcast(payload, 0, group=tp.control)


def recv_step(tp: TPGroup) -> tuple[torch.Tensor, AttentionMetadata] | None:
    """The next step's (input_ids, metadata) on this rank's device; None when rank 0 stops."""
    header = torch.empty(HEADER, dtype=torch.long)
    dist.broadcast(header, 0, group=tp.control)
    code, T, B, W, N = header.tolist()
    if code == STOP:
        return None
    payload = torch.empty(3 * T + 2 * B + B * W + N, dtype=torch.long)
    dist.broadcast(payload, 0, group=tp.control)
    ids, pos, slots, qlens, ctx, tables, logits = payload.to(tp.device).split(
        [T, T, T, B, B, B * W, N])
    meta = AttentionMetadata(positions=pos, slot_mapping=slots, query_lens=qlens.tolist(),
                             context_lens=ctx.tolist(), block_tables=tables.view(B, W),
                             context_lens_t=ctx, logits_indices=logits)
    return ids, meta


def serve_steps(tp: TPGroup, model, kv) -> None:
    """A rank other than 0: run rank 0's steps until it says stop."""
    while (step := recv_step(tp)) is not None:
        with torch.inference_mode():
            model(step[0], step[1], kv)
