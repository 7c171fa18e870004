"""Decode steps replayed from CUDA graphs.

A decode step of a 64-layer model is a few thousand small kernels; launched one by one from
Python, the launches can take longer than the GPU takes to run them. A CUDA graph records the
step once and replays it with one launch. Replays read fixed buffers, so a step is padded to a
captured shape: the batch to the next of 1, 2, 4, 8, 16, 32, ... sequences, the block tables to
the next power of two of blocks. Padded rows decode a dummy token into a block that no sequence
owns (the runner allocates one past the scheduler's blocks); padded table entries point there
too, and attention masks every key past a row's context length. The real rows' results are the
eager step's in exact arithmetic; padding changes matmul shapes, so floats may differ in the
last bits.

A shape is captured the first time a step needs it. Shapes whose attention would gather more
than MAX_GATHERED_KEYS keys (sequences x padded context) run eagerly: the graphs' memory pool
keeps the peak temporaries of the biggest step it captured, outside the memory eager steps use.
A capture that fails (out of memory, say) leaves that shape eager; serving goes on.

Off CUDA the same buffers and padding run eagerly (`replay=False`): that is how the tests check
the padding, the scratch block and the mask against the plain path on CPU.
"""

from __future__ import annotations

import logging

import torch

from qwq.model import AttentionMetadata, KVCache

log = logging.getLogger("qwq.engine")

# sequences x padded context of the biggest captured step: its float32 K/V gather (for
# QwQ-32B, 4 KiB per key for K and again for V, per layer in turn) stays reserved in the pool
MAX_GATHERED_KEYS = 1 << 18


def _batch_sizes(max_batch: int) -> list[int]:
    sizes, s = [], 1
    while s < max_batch:
        sizes.append(s)
        s = s * 2 if s < 16 else s + 16
    return sizes + [max_batch]


class DecodeGraphs:
    def __init__(self, model, kv: KVCache, block_size: int, scratch_block: int, max_batch: int,
                 max_blocks: int, replay: bool):
        if scratch_block >= kv.num_blocks:
            raise ValueError("the scratch block must be a block of the cache")
        dev = kv.k.device
        self.model, self.kv, self.block_size = model, kv, block_size
        self.scratch, self.max_blocks, self.replay = scratch_block, max_blocks, replay
        self.sizes = _batch_sizes(max_batch)
        n = self.sizes[-1]
        self.ids = torch.zeros(n, dtype=torch.long, device=dev)
        self.positions = torch.zeros(n, dtype=torch.long, device=dev)
        self.slots = torch.zeros(n, dtype=torch.long, device=dev)
        self.tables = torch.zeros(n, max_blocks, dtype=torch.long, device=dev)
        self.lens = torch.zeros(n, dtype=torch.long, device=dev)
        self.rows = torch.arange(n, device=dev)
        self._clear(0, n)
        # every graph writes its logits here, outside the pool: one buffer, not one per shape
        self.logits = torch.empty(n, model.config.vocab_size, dtype=torch.float32, device=dev)
        self.graphs: dict[tuple[int, int], torch.cuda.CUDAGraph] = {}
        self.eager: set[tuple[int, int]] = set()  # shapes too big to capture, or that failed
        self.pool = None
        # one capture stream on this device: torch.cuda.graph's default is shared by the process
        self.stream = torch.cuda.Stream(device=dev) if replay else None
        # the rotary table and rope's factors of it at their full length now, and held: a graph
        # keeps the addresses it read, even if a later engine on this model rebuilds them
        model.rotary.cos_sin(self.positions[:1], max_blocks * block_size)
        self._rope_table = model.rotary._cache
        self._rope_factors = model.rotary.factor_tables(max_blocks * block_size, model.dtype, dev)

    def takes(self, meta: AttentionMetadata) -> bool:
        """A decode-only step whose logits rows are its sequences in order."""
        return (meta.decode_only and len(meta.query_lens) <= self.sizes[-1]
                and meta.block_tables.shape[1] <= self.max_blocks
                and meta.logits_indices.shape[0] == len(meta.query_lens))

    def _clear(self, lo: int, hi: int) -> None:
        """Rows lo..hi decode token 0 at position 0 into the scratch block."""
        self.ids[lo:hi] = 0
        self.positions[lo:hi] = 0
        self.slots[lo:hi] = self.scratch * self.block_size
        self.tables[lo:hi] = self.scratch
        self.lens[lo:hi] = 1

    def _shape(self, batch: int, width: int) -> tuple[int, int]:
        size = next(s for s in self.sizes if s >= batch)
        w = 1
        while w < width:
            w *= 2
        return size, min(w, self.max_blocks)

    def _meta(self, size: int, width: int) -> AttentionMetadata:
        return AttentionMetadata(
            positions=self.positions[:size], slot_mapping=self.slots[:size],
            query_lens=[1] * size, context_lens=[width * self.block_size] * size,
            block_tables=self.tables[:size, :width], context_lens_t=self.lens[:size],
            logits_indices=self.rows[:size], padded=True)

    def run(self, input_ids: torch.Tensor, meta: AttentionMetadata) -> torch.Tensor | None:
        """The step's logits (one row per sequence) from a replay of its shape's graph, or
        None where this shape runs eagerly (the caller runs the model)."""
        batch, width = len(meta.query_lens), meta.block_tables.shape[1]
        shape = size, w = self._shape(batch, width)
        if self.replay and shape not in self.graphs and not self._capture(shape):
            return None
        self.ids[:batch].copy_(input_ids)
        self.positions[:batch].copy_(meta.positions)
        self.slots[:batch].copy_(meta.slot_mapping)
        self.tables[:batch, :width].copy_(meta.block_tables)
        self.tables[:batch, width:w] = self.scratch
        self.lens[:batch].copy_(meta.context_lens_t)
        self._clear(batch, size)  # rows a bigger step left behind would write into their slots
        if not self.replay:
            return self.model(self.ids[:size], self._meta(size, w), self.kv)[:batch]
        self.graphs[shape].replay()
        return self.logits[:batch]

    def _capture(self, shape: tuple[int, int]) -> bool:
        size, width = shape
        if shape in self.eager or size * width * self.block_size > MAX_GATHERED_KEYS:
            self.eager.add(shape)
            return False
        previous = torch.cuda.current_stream(self.ids.device)
        try:
            with torch.cuda.device(self.ids.device):
                self._record(size, width)
            return True
        except (RuntimeError, torch.cuda.OutOfMemoryError) as e:
            torch.cuda.set_stream(previous)  # a failed capture_end leaves the capture stream
            self.graphs.pop(shape, None)
            self.eager.add(shape)
            log.warning("qwq: capturing the decode graph for %d sequences x %d blocks failed "
                        "(%s); that shape runs eagerly", size, width, e)
            return False

    def _record(self, size: int, width: int) -> None:
        # every row at the scratch block: the warm-up and the capture write K/V at their slots
        self._clear(0, self.sizes[-1])
        self.stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(self.stream):  # lazy initialisations (cuBLAS) outside capture
            self.model(self.ids[:size], self._meta(size, width), self.kv)
        torch.cuda.current_stream().wait_stream(self.stream)
        graph = torch.cuda.CUDAGraph()
        meta = self._meta(size, width)  # per-step values the layers share are built anew
        # one memory pool for every shape: steps never overlap, and each step's logits are
        # read before the next replays
        with torch.cuda.graph(graph, pool=self.pool, stream=self.stream,
                              capture_error_mode="thread_local"):
            self.logits[:size].copy_(self.model(self.ids[:size], meta, self.kv))
        if self.pool is None:
            self.pool = graph.pool()
        self.graphs[(size, width)] = graph
