"""The draft model of speculative decoding: a small network with the target's tokenizer (for
QwQ-32B, Qwen2.5-0.5B) proposes the next few tokens, and the target checks them all in one
forward (LLMEngine._verify keeps the longest prefix the target itself would have produced).

The draft has a paged KV cache of its own, with as many blocks as the target's and read
through the target's block tables: a token's draft K/V sit at the same slot as its target K/V,
so the scheduler's allocation, prefix caching, preemption and rollback serve both caches.

Each step, before the target's forward, the draft
1. computes the tokens the target computes this step (prefill chunks, last tokens), plus any
   it is behind on; a drafting sequence's last row gives the first draft token;
2. feeds each draft token back, one batched forward per further token.
Draft tokens are sampled from the draft's own distribution q under the request's temperature
and truncation (greedy: its argmax); the target accepts one with probability min(1, p/q) and
otherwise samples from what p has beyond q (sampler._draw), so the output follows p exactly.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from qwq.engine.sampler import truncate
from qwq.engine.scheduler import SchedulerOutput
from qwq.engine.sequence import Sequence
from qwq.model import AttentionMetadata, KVCache, Qwen2Model


@dataclass
class _Row:
    seq: Sequence
    start: int  # first position fed
    tokens: list[int]
    drafts: int  # draft tokens this sequence gets (0: only keep the cache in step)


class DraftRunner:
    def __init__(self, model: Qwen2Model, num_blocks: int, block_size: int,
                 kv_dtype: torch.dtype, device: torch.device, vocab_size: int):
        """num_blocks: the target cache's (slot for slot); vocab_size: the width of the
        target's logits, which the draft's distributions are laid out in."""
        cfg = model.config
        self.model = model
        self.device = device
        self.block_size = block_size
        self.kv = KVCache(cfg.num_hidden_layers, num_blocks, block_size,
                          cfg.num_key_value_heads, cfg.head_dim, kv_dtype, device)
        self.vocab_size = vocab_size
        self.width = min(vocab_size, cfg.vocab_size)  # ids both models score
        self.valid: dict[int, int] = {}  # seq_id -> positions whose draft K/V are cached

    @torch.inference_mode()
    def propose(self, batch: SchedulerOutput, generators: dict[int, torch.Generator]) -> None:
        """Keep the draft cache up with this step and fill seq.draft_ids (and draft_probs) of
        the sequences batch.draft_slots gives draft tokens."""
        rows = [self._row(seq, n, k) for seq, n, k
                in zip(batch.seqs, batch.num_new, batch.draft_slots)]
        drafting = [r for r in rows if r.drafts]
        for r in drafting:
            r.seq.draft_ids, r.seq.draft_probs = [], []
        logits = self._forward(rows, drafting)
        for step in range(max((r.drafts for r in drafting), default=0)):
            for r, row in zip(drafting, logits):
                if len(r.seq.draft_ids) < r.drafts:
                    self._pick(r.seq, row, generators.get(r.seq.seq_id))
            drafting = [r for r in drafting if len(r.seq.draft_ids) < r.drafts]
            if not drafting:
                break
            feed = [_Row(r.seq, r.seq.num_tokens + len(r.seq.draft_ids) - 1,
                         r.seq.draft_ids[-1:], r.drafts) for r in drafting]
            logits = self._forward(feed, feed)

    def _row(self, seq: Sequence, n: int, drafts: int) -> _Row:
        """What the draft feeds for seq: from where its cache stops (never past the target's,
        whose later positions may hold rejected drafts) to the end of the target's chunk."""
        start = min(self.valid.setdefault(seq.seq_id, seq.num_computed), seq.num_computed)
        end = seq.num_computed + n - drafts - len(seq.draft_ids)  # the target's own tokens
        return _Row(seq, start, seq.token_ids[start:end], drafts)

    def _forward(self, rows: list[_Row], scored: list[_Row]) -> torch.Tensor:
        """One draft forward over rows; logits at the last token of each row in scored."""
        ids, positions, slots, tables, ctx, last = [], [], [], [], [], {}
        bs = self.block_size
        for r in rows:
            pos = range(r.start, r.start + len(r.tokens))
            ids += r.tokens
            positions += pos
            slots += [r.seq.block_ids[p // bs] * bs + p % bs for p in pos]
            ctx.append(r.start + len(r.tokens))
            tables.append(r.seq.block_ids)
            last[id(r)] = len(ids) - 1
            self.valid[r.seq.seq_id] = ctx[-1]
        width = max(len(t) for t in tables)
        dev = self.device
        meta = AttentionMetadata(
            positions=torch.tensor(positions, dtype=torch.long, device=dev),
            slot_mapping=torch.tensor(slots, dtype=torch.long, device=dev),
            query_lens=[len(r.tokens) for r in rows], context_lens=ctx,
            block_tables=torch.tensor([t + [0] * (width - len(t)) for t in tables],
                                      dtype=torch.long, device=dev),
            context_lens_t=torch.tensor(ctx, dtype=torch.long, device=dev),
            logits_indices=torch.tensor([last[id(r)] for r in scored], dtype=torch.long,
                                        device=dev))
        return self.model(torch.tensor(ids, dtype=torch.long, device=dev), meta, self.kv)

    def _pick(self, seq: Sequence, logits: torch.Tensor, generator: torch.Generator | None
              ) -> None:
        """The next draft token from the draft's distribution under seq's sampling settings;
        its probabilities go with it for the target's acceptance test (none when greedy)."""
        p = seq.params
        logits = logits[: self.width]
        if p.greedy:
            seq.draft_ids.append(int(torch.argmax(logits)))
            return
        q = truncate(logits / p.temperature, p).softmax(-1)
        q = torch.nan_to_num(q, nan=0.0).clamp_(min=0)
        if not float(q.sum()) > 0:  # nothing left to sample from: draft the argmax
            q = torch.zeros_like(q)
            q[int(torch.argmax(logits))] = 1.0
        token = int(torch.multinomial(q, 1, generator=generator))
        probs = torch.zeros(self.vocab_size, dtype=q.dtype, device=q.device)
        probs[: self.width] = q
        seq.draft_ids.append(token)
        seq.draft_probs.append(probs)

    def drop(self, seq: Sequence) -> None:
        self.valid.pop(seq.seq_id, None)
