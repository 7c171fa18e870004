"""Which sequences run in the next step, and how many tokens of each.

No prefill or decode phase: each sequence has tokens computed and tokens it holds, and every
step hands out tokens from a budget. Running sequences go first (a decode is one token, an
unfinished prefill its next chunk), then waiting ones in arrival order. When KV blocks run out,
the most recently admitted running sequence is preempted: its blocks are released and it waits
to be recomputed (its prefix-cached blocks often survive, which makes that cheap).

One long prompt must not stall everyone (vLLM's long_prefill_token_threshold): a prefill chunk
takes at most `long_prefill_token_threshold` tokens a step, so the budget always has room to
admit new requests and the step stays short while decodes and short prompts share it. A step
made of nothing but capped prefills (no one else is waiting for it) grows: twice the cap, then
four times, up to the budget, so a long prompt alone still prefills at full speed. It grows one
step at a time because a request arriving now waits for the step under way: the step right
after others finish (when clients and agents send their next request) stays at the cap.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from qwq.config import EngineConfig
from qwq.engine.kv_cache import BlockManager
from qwq.engine.sequence import Sequence, Status
from qwq.engine.speculative import propose_ngram
from qwq.errors import QwQError


@dataclass
class SchedulerOutput:
    seqs: list[Sequence] = field(default_factory=list)
    num_new: list[int] = field(default_factory=list)
    preempted: list[Sequence] = field(default_factory=list)
    # per sequence: tokens the draft model proposes after its last one (counted in num_new)
    draft_slots: list[int] = field(default_factory=list)

    @property
    def empty(self) -> bool:
        return not self.seqs


class Scheduler:
    def __init__(self, config: EngineConfig, blocks: BlockManager,
                 max_model_len: int | None = None):
        self.config = config
        self.blocks = blocks
        self.max_model_len = max_model_len or blocks.num_blocks * blocks.block_size
        k, lo, hi = config.speculative_ngram, config.prompt_lookup_min, config.prompt_lookup_max
        if k < 0 or (k and not 1 <= lo <= hi):
            raise QwQError(f"speculative_ngram={k}, prompt_lookup_min={lo}, prompt_lookup_max="
                           f"{hi}: need speculative_ngram >= 0 and 1 <= min <= max")
        if config.num_speculative_tokens < 0:
            raise QwQError(f"num_speculative_tokens={config.num_speculative_tokens}: need >= 0")
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []
        self._alone_steps = 0  # consecutive steps made of capped prefills only

    def add(self, seq: Sequence) -> None:
        self.waiting.append(seq)

    def has_work(self) -> bool:
        return bool(self.waiting or self.running)

    @property
    def prefill_cap(self) -> int:
        """Most prefill tokens one sequence takes in a shared step (the whole budget when 0)."""
        budget = self.config.max_num_batched_tokens
        cap = self.config.long_prefill_token_threshold
        if cap is None:
            cap = max(1, budget // 4)
        return min(cap, budget) if cap > 0 else budget

    def schedule(self) -> SchedulerOutput:
        out = SchedulerOutput()
        budget = self._schedule_running(out, self.config.max_num_batched_tokens)
        if not out.preempted:
            budget = self._admit(out, budget)
            self._fill_up(out, budget)
        return out

    def _schedule_running(self, out: SchedulerOutput, budget: int) -> int:
        cap = self.prefill_cap
        i = 0
        while i < len(self.running) and budget > 0:
            seq = self.running[i]
            n = min(seq.num_uncomputed, budget, cap)
            draft, slots = self._draft(seq, budget - n) if n == seq.num_uncomputed == 1 \
                else ([], 0)
            if not self._make_room(seq, seq.num_computed + n + len(draft) + slots, out):
                break  # seq itself was preempted
            seq.draft_ids = draft
            out.seqs.append(seq)
            out.num_new.append(n + len(draft) + slots)
            out.draft_slots.append(slots)
            budget -= n + len(draft) + slots
            i += 1
        return budget

    def _fill_up(self, out: SchedulerOutput, budget: int) -> None:
        """When every sequence in the step is a prefill cut at the cap, nobody is waiting on
        a short step: hand them more of the budget, in order, as far as free blocks go (never
        by preempting): the step holds cap * 2**k tokens after k such steps in a row."""
        cap = self.prefill_cap
        capped = all(not seq.draft_ids and n == cap < seq.num_uncomputed
                     for seq, n in zip(out.seqs, out.num_new))
        if not out.seqs or not capped:
            self._alone_steps = 0
            return
        taken = sum(out.num_new)
        budget = min(budget, (cap << min(self._alone_steps, 30)) - taken)
        self._alone_steps += 1
        for i, seq in enumerate(out.seqs):
            if budget <= 0:
                return
            n = out.num_new[i]
            more = min(seq.num_uncomputed - n, budget,
                       self._largest_fitting(seq, seq.num_uncomputed) - n)
            if more > 0:
                self.blocks.allocate(seq, seq.num_computed + n + more)
                out.num_new[i] += more
                budget -= more

    @property
    def model_drafts(self) -> int:
        """Draft tokens a step from the draft model (the engine has one when it is named)."""
        return self.config.num_speculative_tokens if self.config.speculative_model else 0

    def _draft(self, seq: Sequence, room: int) -> tuple[list[int], int]:
        """A decoding sequence's draft: prompt-lookup tokens, or a number of tokens for the
        draft model to propose, whichever is longer; never more than fit the budget, its
        max_tokens, the context, or the free KV blocks (drafts never preempt anyone)."""
        p = seq.params
        cap = min(room, self.max_model_len - seq.num_tokens,
                  (p.max_tokens or self.max_model_len) - len(seq.output_ids) - 1)
        k, slots = min(self.config.speculative_ngram, cap), min(self.model_drafts, cap)
        draft = propose_ngram(seq.token_ids, k, self.config.prompt_lookup_min,
                              self.config.prompt_lookup_max) if k > 0 else []
        if len(draft) >= slots:
            slots = 0
        else:
            draft = []
        if not (draft or slots) or not self.blocks.can_allocate(
                seq, seq.num_computed + 1 + len(draft) + slots):
            return [], 0
        return draft, slots

    def _make_room(self, seq: Sequence, num_tokens: int, out: SchedulerOutput) -> bool:
        while not self.blocks.can_allocate(seq, num_tokens):
            victim = self.running.pop()
            self._preempt(victim)
            out.preempted.append(victim)
            if victim is seq:
                return False
        self.blocks.allocate(seq, num_tokens)
        return True

    def _preempt(self, seq: Sequence) -> None:
        self.blocks.release(seq)
        seq.num_computed = 0
        seq.num_preemptions += 1
        seq.status = Status.WAITING
        self.waiting.appendleft(seq)

    def _admit(self, out: SchedulerOutput, budget: int) -> int:
        cap = self.prefill_cap
        while self.waiting and budget > 0 and len(self.running) < self.config.max_num_seqs:
            seq = self.waiting[0]
            if seq.num_computed == 0 and not seq.block_ids:
                seq.num_computed = self.blocks.match_prefix(seq)
                if seq.num_preemptions == 0:
                    seq.num_cached_prompt = seq.num_computed
            n = min(seq.num_uncomputed, budget, cap)
            if not self.blocks.can_allocate(seq, seq.num_computed + n):
                if not self.running and not out.seqs:
                    # alone and still too big: take what fits, the rest comes next steps
                    n = self._largest_fitting(seq, n)
                if n <= 0 or not self.blocks.can_allocate(seq, seq.num_computed + n):
                    # give back the cached blocks matched above: a waiting sequence holding
                    # them could starve the pool (they stay cached for its next try)
                    self.blocks.release(seq)
                    seq.num_computed = 0
                    break
            self.blocks.allocate(seq, seq.num_computed + n)
            self.waiting.popleft()
            seq.status = Status.RUNNING
            self.running.append(seq)
            out.seqs.append(seq)
            out.num_new.append(n)
            out.draft_slots.append(0)
            budget -= n
        return budget

    def _largest_fitting(self, seq: Sequence, n: int) -> int:
        room = (len(seq.block_ids) + self.blocks.num_free) * self.blocks.block_size
        return min(n, room - seq.num_computed)

    def finish(self, seq: Sequence) -> None:
        """Remove a finished or aborted sequence and free its blocks."""
        if seq in self.running:
            self.running.remove(seq)
        elif seq in self.waiting:
            self.waiting.remove(seq)
        self.blocks.release(seq)
        seq.status = Status.FINISHED
