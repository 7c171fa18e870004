"""Attention over a paged KV cache.

The cache of each layer is one preallocated tensor of slots (num_blocks * block_size slots);
a sequence owns a list of blocks (its block table). New keys/values are written at their slots,
then each sequence attends over the blocks its table names. The cache may hold 16-bit values or
8-bit codes with a scale per row (qwq.model.kv_quant): written quantized, read back as values.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from qwq.kernels import fused_layers_take
from qwq.model.kv_quant import row_bytes, row_width, values, write


@dataclass
class AttentionMetadata:
    """What one forward needs to know about the batch, built by the runner for each step."""

    positions: torch.Tensor  # (T,) absolute position of every token in the flat batch
    slot_mapping: torch.Tensor  # (T,) cache slot each new token's K/V is written to
    query_lens: list[int]  # new tokens per sequence, in batch order
    context_lens: list[int]  # tokens in cache per sequence after this step (cached + new)
    block_tables: torch.Tensor  # (B, max_blocks) block ids, padded with 0
    context_lens_t: torch.Tensor  # (B,) context_lens as a tensor
    logits_indices: torch.Tensor  # (B,) index in T of each sequence's last token
    # rows and block tables padded to a captured shape (qwq.engine.graphs): mask at any length
    padded: bool = False
    # per-step values every layer shares, built by the first layer that needs them
    # (gather slots, decode padding mask) instead of once per layer
    shared: dict = field(default_factory=dict, repr=False, compare=False)

    @property
    def decode_only(self) -> bool:
        return all(n == 1 for n in self.query_lens)


class KVCache:
    """K and V slots for every layer: (layers, num_blocks * block_size, kv_heads, row width),
    a row being head_dim values, or head_dim codes and their scale (dtype int8 or fp8)."""

    def __init__(self, num_layers: int, num_blocks: int, block_size: int, kv_heads: int,
                 head_dim: int, dtype: torch.dtype, device: torch.device | str = "cpu"):
        shape = (num_layers, num_blocks * block_size, kv_heads, row_width(head_dim, dtype))
        self.k = torch.zeros(shape, dtype=dtype, device=device)
        self.v = torch.zeros(shape, dtype=dtype, device=device)
        self.block_size = block_size
        self.num_blocks = num_blocks

    @staticmethod
    def bytes_per_block(num_layers: int, block_size: int, kv_heads: int, head_dim: int,
                        dtype: torch.dtype) -> int:
        return 2 * num_layers * block_size * kv_heads * row_bytes(head_dim, dtype)


def _gather(cache: torch.Tensor, block_tables: torch.Tensor, block_size: int) -> torch.Tensor:
    """(B, max_blocks * block_size, kv_heads, head_dim) view of each sequence's slots."""
    slots = (block_tables.unsqueeze(-1) * block_size
             + torch.arange(block_size, device=block_tables.device)).flatten(1)
    return cache.index_select(0, slots.flatten()).view(*slots.shape, *cache.shape[1:])


def paged_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, k_cache: torch.Tensor,
                    v_cache: torch.Tensor, meta: AttentionMetadata, block_size: int,
                    scale: float) -> torch.Tensor:
    """q: (T, H, D); k, v: (T, KVH, D) for the new tokens. Returns (T, H, D)."""
    write(k_cache, meta.slot_mapping, k)
    write(v_cache, meta.slot_mapping, v)
    if meta.decode_only:
        return _decode(q, k_cache, v_cache, meta, block_size, scale)
    out = torch.empty_like(q)
    starts, single = _single_token_rows(meta, q)
    if single is not None:
        # decodes batched with prefills take the decode kernel too: a token's numbers don't
        # depend on what else is in the step
        rows, tables, lens = single
        out[rows] = torch.ops.qwq.decode_attention(q[rows].contiguous(), k_cache, v_cache,
                                                   tables, lens, block_size, scale)
    for i, (n, ctx) in enumerate(zip(meta.query_lens, meta.context_lens)):
        if n == 1 and single is not None:
            continue
        start = starts[i]
        table = meta.block_tables[i: i + 1, : (ctx + block_size - 1) // block_size]
        # 4-D (batch of one): torch's CPU flash kernel takes only 4-D inputs; 3-D ones fall to
        # the math path, which materializes (H, n, ctx) scores (500 MB and 6x the time at 2K)
        keys = values(_gather(k_cache, table, block_size)[:, :ctx], q.dtype).transpose(1, 2)
        vals = values(_gather(v_cache, table, block_size)[:, :ctx], q.dtype).transpose(1, 2)
        # keys, vals: (1, KVH, ctx, D)
        qi = q[start: start + n].transpose(0, 1).unsqueeze(0)  # (1, H, n, D)
        if n == ctx:
            o = F.scaled_dot_product_attention(qi, keys, vals, is_causal=True, scale=scale,
                                               enable_gqa=True)
        else:
            # query i sits at position ctx - n + i and sees keys 0..ctx - n + i
            qpos = torch.arange(ctx - n, ctx, device=q.device).unsqueeze(1)
            mask = torch.arange(ctx, device=q.device).unsqueeze(0) <= qpos
            o = F.scaled_dot_product_attention(qi, keys, vals, attn_mask=mask, scale=scale,
                                               enable_gqa=True)
        out[start: start + n] = o[0].transpose(0, 1)
    return out


def _single_token_rows(meta: AttentionMetadata, q: torch.Tensor):
    """Once per step, shared by the layers: each sequence's first row in the flat batch, and
    (rows, block tables, context lengths) of the one-token sequences when the decode kernel
    takes them (else None)."""
    cached = meta.shared.get("single")
    if cached is None:
        starts = [0]
        for n in meta.query_lens:
            starts.append(starts[-1] + n)
        ids = [i for i, n in enumerate(meta.query_lens) if n == 1] if fused_layers_take(q) else []
        single = None
        if ids:
            seqs = torch.tensor(ids, device=q.device)
            single = (torch.tensor([starts[i] for i in ids], device=q.device),
                      meta.block_tables[seqs].contiguous(), meta.context_lens_t[seqs].contiguous())
        cached = meta.shared["single"] = (starts, single)
    return cached


def _decode(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
            meta: AttentionMetadata, block_size: int, scale: float) -> torch.Tensor:
    """One new token per sequence: batched over padded contexts, written out as matmuls
    because for a single query they beat the fused kernels' setup cost."""
    if fused_layers_take(q):  # one fused op (qwq/kernels/layers.cpp) instead of ~12 per layer
        return torch.ops.qwq.decode_attention(q.contiguous(), k_cache, v_cache,
                                              meta.block_tables.contiguous(),
                                              meta.context_lens_t, block_size, scale)
    B, H, D = q.shape
    shared = meta.shared
    slots = shared.get("slots")
    if slots is None:  # first layer of the step: the same slots serve every layer, K and V
        slots = (meta.block_tables.unsqueeze(-1) * block_size
                 + torch.arange(block_size, device=q.device)).flatten()
        shared["slots"] = slots
    length = slots.shape[0] // B
    # float32 from the gather on: CPU bf16 matmuls on these strided shapes cost more than the
    # conversion (96 against 158 us a layer at 100 tokens), and one dtype at every batch size
    # keeps a sequence's numbers the same alone or batched
    keys = (values(k_cache.index_select(0, slots), torch.float32)
            .view(B, length, k_cache.shape[1], D).permute(0, 2, 3, 1))
    vals = (values(v_cache.index_select(0, slots), torch.float32)
            .view(B, length, v_cache.shape[1], D).transpose(1, 2))
    kvh = keys.shape[1]  # keys: (B, KVH, D, L), vals: (B, KVH, L, D)
    scores = torch.matmul(q.float().view(B, kvh, H // kvh, D), keys).mul_(scale)
    if B > 1 or length != meta.context_lens[0] or meta.padded:
        pad = shared.get("pad")
        if pad is None:
            pad = (torch.arange(length, device=q.device).unsqueeze(0)
                   >= meta.context_lens_t.unsqueeze(1)).view(B, 1, 1, length)
            shared["pad"] = pad
        scores = scores.masked_fill(pad, float("-inf"))
    return torch.matmul(scores.softmax(-1), vals).view(B, H, D).to(q.dtype)
