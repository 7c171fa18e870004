"""The runner: turns a scheduled batch into tensors, runs the model over the paged KV cache,
and samples. It owns every tensor; it makes no policy decisions."""

from __future__ import annotations

import torch

from qwq import heap
from qwq.engine.draft import DraftRunner
from qwq.engine.graphs import DecodeGraphs
from qwq.engine.sampler import DraftRows, Sample, sample, sample_drafted
from qwq.engine.scheduler import SchedulerOutput
from qwq.engine.sequence import Sequence
from qwq.model import AttentionMetadata, KVCache, Qwen2Model


class ModelRunner:
    def __init__(self, model: Qwen2Model, num_blocks: int, block_size: int,
                 kv_dtype: torch.dtype, device: torch.device | str = "cpu", *,
                 decode_graphs: bool = False, max_batch: int = 64, max_model_len: int = 0):
        """kv_dtype: the cache's storage (qwq.model.kv_quant: 16-bit values, int8 or fp8 codes).
        decode_graphs: replay decode steps from CUDA graphs (qwq.engine.graphs) of up to
        max_batch sequences and max_model_len tokens; off CUDA the same padded buffers run
        eagerly (what the tests compare with the plain path)."""
        cfg = model.config
        self.model = model
        self.device = torch.device(device)
        self.block_size = block_size
        self.num_blocks = num_blocks  # what the scheduler hands out
        # decode graphs pad their batches with rows that write into one more block
        self.kv = KVCache(cfg.num_hidden_layers, num_blocks + decode_graphs, block_size,
                          cfg.num_key_value_heads, cfg.head_dim, kv_dtype, self.device)
        self.graphs = None
        if decode_graphs:
            max_blocks = min(num_blocks, -(-(max_model_len or num_blocks * block_size)
                                           // block_size))
            self.graphs = DecodeGraphs(model, self.kv, block_size, num_blocks, max_batch,
                                       max_blocks, replay=self.device.type == "cuda")
        self.generators: dict[int, torch.Generator] = {}
        self.draft: DraftRunner | None = None  # speculative decoding's draft model, if any

    def prepare(self, batch: SchedulerOutput) -> tuple[torch.Tensor, AttentionMetadata,
                                                        list[Sequence]]:
        """Flat batch tensors. Logits rows come in order: the scored prompt positions of
        sequences that asked for prompt_logprobs (see self.scored), then one per sampled
        sequence."""
        ids: list[int] = []
        positions: list[int] = []
        slots: list[int] = []
        logits_idx: list[int] = []
        sampled: list[Sequence] = []
        self.scored: list[tuple[Sequence, int, int]] = []  # (seq, first position, count)
        score_idx: list[int] = []
        bs = self.block_size
        for seq, n in zip(batch.seqs, batch.num_new):
            start = seq.num_computed
            real = n - len(seq.draft_ids)  # a drafted decode: its last token, then the draft
            ids += seq.token_ids[start:start + real] + seq.draft_ids
            pos = range(start, start + n)
            positions += pos
            slots += [seq.block_ids[p // bs] * bs + p % bs for p in pos]
            if seq.params.prompt_logprobs is not None:
                last = min(start + n, len(seq.prompt_ids) - 1)  # positions with a next token
                if last > start:
                    self.scored.append((seq, start, last - start))
                    score_idx += range(len(ids) - n, len(ids) - n + last - start)
            if start + real == seq.num_tokens:  # the chunk reaches the end: a token is due
                logits_idx += range(len(ids) - 1 - len(seq.draft_ids), len(ids))
                sampled.append(seq)
        logits_idx = score_idx + logits_idx
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
    def execute(self, batch: SchedulerOutput, eos_ids: tuple[int, ...]
                ) -> list[tuple[Sequence, Sample | DraftRows]]:
        """Run one step; returns a sample for each sequence whose chunk reached its end (for a
        drafted sequence, the rows its draft is verified against)."""
        if self.draft is not None:
            self.draft.propose(batch, self.generators)
        input_ids, meta, sampled = self.prepare(batch)
        logits = None
        # scored prompt rows come first in the logits; a graph returns the sequences in order
        if self.graphs is not None and not self.scored and self.graphs.takes(meta):
            logits = self.graphs.run(input_ids, meta)
        if logits is None:
            logits = self.model(input_ids, meta, self.kv)
        if input_ids.numel() >= 64 and input_ids.device.type == "cpu":
            heap.trim()  # a prefill's freed activations back to the OS (see qwq.heap)
        n_scored = sum(count for _, _, count in self.scored)
        if n_scored:
            self._score_prompts(logits[:n_scored])
            logits = logits[n_scored:]
        if not sampled:
            return []
        if any(s.draft_ids for s in sampled):
            return list(zip(sampled, sample_drafted(logits, sampled, eos_ids, self.generators)))
        return list(zip(sampled, sample(logits, sampled, eos_ids, self.generators)))

    def _score_prompts(self, logits: torch.Tensor) -> None:
        """Record, for each scored prompt position, the logprob of the prompt's next token
        (and the top-k), in seq.prompt_logprobs."""
        row = 0
        for seq, first, count in self.scored:
            lp = logits[row: row + count].log_softmax(-1)
            row += count
            nxt = torch.tensor(seq.prompt_ids[first + 1: first + 1 + count], device=lp.device)
            chosen = lp.gather(1, nxt[:, None])[:, 0].tolist()
            k = seq.params.prompt_logprobs
            top = torch.topk(lp, k) if k else None
            if first == 0:  # (again, after a preemption)
                seq.prompt_logprobs = [None]
            store = seq.prompt_logprobs
            for i, (t, c) in enumerate(zip(nxt.tolist(), chosen)):
                entry = {t: c}
                if top is not None:
                    entry.update(zip(top.indices[i].tolist(), top.values[i].tolist()))
                store.append(entry)

    def add_generator(self, seq: Sequence) -> None:
        if seq.params.seed is not None:
            g = torch.Generator(device=self.device)
            g.manual_seed(seq.params.seed + seq.index)
            self.generators[seq.seq_id] = g

    def drop_generator(self, seq: Sequence) -> None:
        self.generators.pop(seq.seq_id, None)
        if self.draft is not None:
            self.draft.drop(seq)
