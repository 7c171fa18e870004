"""The engine: requests in, a step at a time, request outputs (with text deltas) out.

Every surface (the transformers-style API, qwq.LLM, the CLI, the server) drives this class.
add_request and abort may be called from other threads; they land in an inbox that step()
drains, so the scheduler and runner are only ever touched by the thread that steps.
"""

from __future__ import annotations

import itertools
import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from qwq.config import EngineConfig
from qwq.engine.kv_cache import BlockManager
from qwq.engine.runner import ModelRunner
from qwq.engine.sampler import DraftRows, Sample
from qwq.engine.scheduler import Scheduler
from qwq.engine.sequence import Sequence, Status
from qwq.engine.stop import find_stop, holdback
from qwq.errors import QueueFullError, RequestError
from qwq.outputs import CompletionOutput, RequestOutput
from qwq.reasoning.actions import Force, SequenceControl, Stop
from qwq.sampling_params import NEUTRAL_DEFAULTS, SamplingParams, defaults_from_generation_config
from qwq.tokenizer import IncrementalDetokenizer, Tokenizer


@dataclass
class _SeqOut:
    seq: Sequence
    detok: IncrementalDetokenizer
    text: str = ""
    sent_chars: int = 0
    sent_tokens: int = 0
    logprobs: list[dict[int, float]] | None = None
    cumulative_logprob: float = 0.0
    error: str | None = None
    controls: list[SequenceControl] = field(default_factory=list)
    draft_tokens: int = 0  # speculative decoding: tokens drafted for it, and kept
    accepted_draft_tokens: int = 0


@dataclass
class _Request:
    request_id: str
    prompt: str | None
    prompt_ids: list[int]
    params: SamplingParams
    seqs: list[_SeqOut] = field(default_factory=list)
    held: list[Sequence] = field(default_factory=list)  # siblings waiting for the shared prefill
    arrival: float = field(default_factory=time.monotonic)
    first_token_time: float | None = None

    @property
    def finished(self) -> bool:
        return all(s.seq.is_finished for s in self.seqs)


class LLMEngine:
    def __init__(self, runner: ModelRunner, tokenizer: Tokenizer, config: EngineConfig,
                 max_model_len: int, generation_config: dict | None = None,
                 control_factory: Callable[[SamplingParams, Tokenizer, list[int]],
                                           list[SequenceControl]] | None = None):
        self.runner = runner
        self.tokenizer = tokenizer
        self.config = config
        self.blocks = BlockManager(runner.num_blocks, runner.block_size,
                                   config.enable_prefix_caching)
        self.max_model_len = min(max_model_len, runner.num_blocks * runner.block_size)
        self.scheduler = Scheduler(config, self.blocks, self.max_model_len)
        self.generation_config = dict(generation_config or {})
        self.defaults = {**NEUTRAL_DEFAULTS, **defaults_from_generation_config(
            self.generation_config)}
        self.eos_ids = tuple(tokenizer.eos_token_ids)
        self.requests: dict[str, _Request] = {}
        self._inbox: deque[_Request] = deque()
        self._aborts: deque[str] = deque()
        self._seq_ids = itertools.count()
        self.counters = {"prompt_tokens": 0, "generation_tokens": 0, "preemptions": 0,
                         "draft_tokens": 0, "accepted_draft_tokens": 0}
        # builds each sequence's reasoning controls from its params (see qwq.reasoning)
        self.control_factory = control_factory

    # -- requests in ------------------------------------------------------------------------
    def add_request(self, prompt: str | list[int], params: SamplingParams | None = None,
                    request_id: str | None = None) -> str:
        params = (params or SamplingParams()).with_defaults(self.defaults)
        params.validate(self.tokenizer.vocab_size)
        prompt_text = prompt if isinstance(prompt, str) else None
        ids = self.tokenizer.encode(prompt, allow_special=True) if prompt_text is not None \
            else list(prompt)
        self._check_prompt(ids)
        if len(self.scheduler.waiting) + len(self._inbox) >= self.config.max_waiting:
            raise QueueFullError(f"the waiting queue is full ({self.config.max_waiting} "
                                 "requests); retry later")
        req = _Request(request_id or uuid.uuid4().hex, prompt_text, ids, params)
        req.seqs = [self._make_sequence(req, i) for i in range(params.n)]
        refused = self._check_input(req)
        if refused is not None:  # answered at once, without running: see _drain_inbox
            for s in req.seqs:
                s.seq.finish_reason, s.seq.stop_reason = refused.finish_reason, refused.detail
                s.seq.status = Status.FINISHED
        self._inbox.append(req)
        return req.request_id

    def _make_sequence(self, req: _Request, index: int) -> _SeqOut:
        """One of req's samples: its sequence, its controls (the request's own, then the
        engine's factory's) and its logits processors (the request's, then the controls')."""
        params, ids = req.params, req.prompt_ids
        seq = Sequence(next(self._seq_ids), req.request_id, index, list(ids), params,
                       req.arrival)
        controls = [make(params) for make in params.controls]
        if self.control_factory:
            controls += self.control_factory(params, self.tokenizer, ids)
        seq.logits_processors = [*params.logits_processors,
                                 *(p for c in controls if (p := c.logits_processor()) is not None)]
        detok = IncrementalDetokenizer(self.tokenizer, ids, params.skip_special_tokens)
        return _SeqOut(seq, detok, logprobs=[] if params.logprobs is not None else None,
                       controls=controls)

    @staticmethod
    def _check_input(req: _Request) -> Stop | None:
        """The first Stop a control raises on the prompt (an input guard's block), if any."""
        for control in req.seqs[0].controls:
            action = control.on_prompt(req.prompt_ids)
            if action is not None:
                return action
        return None

    def _check_prompt(self, ids: list[int]) -> None:
        if not ids:
            raise RequestError("the prompt is empty", param="prompt")
        if len(ids) >= self.max_model_len:
            raise RequestError(f"the prompt has {len(ids)} tokens; this model's context holds "
                               f"{self.max_model_len} (prompt plus at least one new token)",
                               param="prompt")
        vocab = self.tokenizer.vocab_size
        if any(not 0 <= t < vocab for t in ids):
            raise RequestError(f"prompt token ids must lie in [0, {vocab})", param="prompt")

    def abort(self, request_id: str) -> None:
        self._aborts.append(request_id)

    def is_active(self, request_id: str) -> bool:
        return request_id in self.requests or any(r.request_id == request_id
                                                  for r in list(self._inbox))

    def has_unfinished(self) -> bool:
        return bool(self.requests or self._inbox)

    # -- one step ---------------------------------------------------------------------------
    def step(self) -> list[RequestOutput]:
        touched: dict[str, _Request] = {r.request_id: r for r in self._drain_inbox()}
        for rid in self._drain_aborts():
            touched[rid] = self.requests[rid]
        batch = self.scheduler.schedule()
        self.counters["preemptions"] += len(batch.preempted)
        if not batch.empty:
            results = self.runner.execute(batch, self.eos_ids)
            for seq, n in zip(batch.seqs, batch.num_new):
                if not seq.draft_ids:  # a drafted sequence is settled as its draft is verified
                    seq.num_computed += n
                    self.blocks.commit(seq)
            for seq, sample in results:
                req = self.requests[seq.request_id]
                if isinstance(sample, DraftRows):
                    self._verify(req, req.seqs[seq.index], sample)
                else:
                    self._on_sample(req, req.seqs[seq.index], sample)
                touched[req.request_id] = req
        return [self._output(req) for req in touched.values()]

    def _drain_inbox(self) -> list[_Request]:
        """Move new requests to the scheduler; returns those refused before running."""
        refused = []
        while self._inbox:
            req = self._inbox.popleft()
            self.requests[req.request_id] = req
            self.counters["prompt_tokens"] += len(req.prompt_ids)
            if req.finished:
                refused.append(req)
                continue
            first, *rest = [s.seq for s in req.seqs]
            share = rest and self.config.enable_prefix_caching
            for seq in [first] + ([] if share else rest):
                self._schedule(seq)
            if share:
                req.held = rest
        return refused

    def _schedule(self, seq: Sequence) -> None:
        self.runner.add_generator(seq)
        self.scheduler.add(seq)

    def _drain_aborts(self) -> list[str]:
        done = []
        while self._aborts:
            rid = self._aborts.popleft()
            req = self.requests.get(rid)
            if req is None:
                continue
            for s in req.seqs:
                if not s.seq.is_finished:
                    self._finish(s.seq, "abort")
            done.append(rid)
        return done

    def _verify(self, req: _Request, out: _SeqOut, rows: DraftRows) -> None:
        """Keep the longest prefix of seq's draft that the model would have produced, plus the
        model's own next token. Tokens go through _on_sample one at a time, exactly as without
        a draft (stop checks, max_tokens, reasoning controls); the rest is dropped as soon as a
        token differs from the draft, the sequence finishes or a control forces tokens in. Only
        positions holding kept tokens count as computed; blocks past them are given back."""
        seq, draft = out.seq, rows.draft
        base = seq.num_computed
        seq.draft_ids, seq.draft_probs = [], []
        self.counters["draft_tokens"] += len(draft)
        out.draft_tokens += len(draft)
        for i in range(len(draft) + 1):
            seq.num_computed = base + 1 + i  # the token at position base + i is kept
            self.blocks.commit(seq)
            before = len(seq.output_ids)
            sample = rows.token_at(i)
            self._on_sample(req, out, sample)
            if i == len(draft) or sample.token != draft[i] or sample.error:
                break
            self.counters["accepted_draft_tokens"] += 1
            out.accepted_draft_tokens += 1
            if seq.is_finished or len(seq.output_ids) != before + 1:
                break
        if not seq.is_finished:
            self.blocks.trim(seq, seq.num_tokens)

    def _on_sample(self, req: _Request, out: _SeqOut, sample: Sample) -> None:
        seq = out.seq
        if req.held:  # the shared prompt is in the cache now: siblings reuse its blocks
            for sibling in req.held:
                self._schedule(sibling)
            req.held = []
        if sample.error:
            out.error = sample.error
            self._finish(seq, "error")
            return
        req.first_token_time = req.first_token_time or time.monotonic()
        seq.output_ids.append(sample.token)
        self.counters["generation_tokens"] += 1
        if out.logprobs is not None:
            out.logprobs.append({sample.token: sample.logprob, **(sample.top_logprobs or {})})
            out.cumulative_logprob += sample.logprob or 0.0
        self._check_stop(out, sample.token)

    def _check_stop(self, out: _SeqOut, token: int) -> None:
        seq, p = out.seq, out.seq.params
        delta = out.detok.add(token)
        out.text += delta
        may_stop = len(seq.output_ids) >= p.min_tokens
        if may_stop and not p.ignore_eos and token in self.eos_ids:
            return self._finish(seq, "stop")
        if may_stop and token in p.stop_token_ids:
            seq.stop_reason = token
            return self._finish(seq, "stop")
        hit = find_stop(out.text, p.stop, len(delta)) if may_stop and p.stop else None
        if hit:
            index, stop = hit
            out.text = out.text[: index + (len(stop) if p.include_stop_str_in_output else 0)]
            seq.stop_reason = stop
            return self._finish(seq, "stop")
        if len(seq.output_ids) >= (p.max_tokens or self.max_model_len) \
                or seq.num_tokens >= self.max_model_len:
            return self._finish(seq, "length")
        self._apply_controls(out, token)

    def _apply_controls(self, out: _SeqOut, token: int) -> None:
        seq = out.seq
        for control in out.controls:
            action = control.on_token(token, out.text, seq.output_ids)
            if isinstance(action, Stop):
                if action.text_end is not None:  # the blocked text never reaches the caller
                    out.text = out.text[:max(action.text_end, out.sent_chars)]
                seq.stop_reason = dict(action.detail) or None
                return self._finish(seq, action.finish_reason)
            if isinstance(action, Force) and action.token_ids:
                room = min((seq.params.max_tokens or self.max_model_len) - len(seq.output_ids),
                           self.max_model_len - seq.num_tokens)
                for t in action.token_ids[:max(room, 0)]:
                    seq.output_ids.append(t)
                    seq.forced_ids.add(len(seq.output_ids) - 1)
                    out.text += out.detok.add(t)
                return

    def _finish(self, seq: Sequence, reason: str) -> None:
        seq.finish_reason = reason
        self.scheduler.finish(seq)
        self.runner.drop_generator(seq)

    # -- outputs ----------------------------------------------------------------------------
    def _output(self, req: _Request) -> RequestOutput:
        outs = [self._completion(s) for s in req.seqs]
        finished = req.finished
        if finished:
            self.requests.pop(req.request_id, None)
        metrics = {"arrival": req.arrival}
        if req.first_token_time:
            metrics["first_token"] = req.first_token_time
        drafted = sum(s.draft_tokens for s in req.seqs)
        if drafted:  # speculative decoding: its acceptance rate is accepted / drafted
            metrics["draft_tokens"] = drafted
            metrics["accepted_draft_tokens"] = sum(s.accepted_draft_tokens for s in req.seqs)
        first = req.seqs[0].seq
        return RequestOutput(req.request_id, req.prompt, req.prompt_ids, outs, finished,
                             num_cached_tokens=first.num_cached_prompt, metrics=metrics,
                             prompt_logprobs=first.prompt_logprobs)

    def _completion(self, out: _SeqOut) -> CompletionOutput:
        seq = out.seq
        if seq.is_finished and seq.finish_reason != "abort" and seq.stop_reason is None \
                or seq.finish_reason == "stop" and isinstance(seq.stop_reason, int):
            out.text += out.detok.flush()  # bytes of a character cut off by the end
        visible = len(out.text) if seq.is_finished else \
            len(out.text) - holdback(out.text, seq.params.stop)
        visible = max(visible, out.sent_chars)
        delta = out.text[out.sent_chars:visible]
        delta_ids = seq.output_ids[out.sent_tokens:]
        out.sent_chars, out.sent_tokens = visible, len(seq.output_ids)
        return CompletionOutput(
            index=seq.index, text=out.text[:visible], token_ids=list(seq.output_ids),
            cumulative_logprob=out.cumulative_logprob if out.logprobs is not None else None,
            logprobs=out.logprobs, finish_reason=seq.finish_reason, stop_reason=seq.stop_reason,
            delta_text=delta, delta_token_ids=delta_ids, error=out.error)

    # -- introspection ----------------------------------------------------------------------
    def stats(self) -> dict[str, float]:
        return {"running": len(self.scheduler.running), "waiting": len(self.scheduler.waiting),
                "kv_usage": self.blocks.usage(), "free_blocks": self.blocks.num_free,
                "total_blocks": self.blocks.num_blocks,
                "prefix_hit_rate": self.blocks.hit_rate(), **self.counters}
