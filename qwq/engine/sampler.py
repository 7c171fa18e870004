"""Logits processors and sampling: plain functions over a (vocab,) row of float32 logits."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from qwq.engine.sequence import Sequence
from qwq.kernels import kernels_available
from qwq.sampling_params import SamplingParams


@dataclass
class Sample:
    token: int
    logprob: float | None = None
    top_logprobs: dict[int, float] | None = None
    error: str | None = None  # this row's logits were unusable (NaN/inf): fail this sequence alone


def apply_penalties(logits: torch.Tensor, seq: Sequence, p: SamplingParams) -> torch.Tensor:
    if p.repetition_penalty not in (None, 1.0):
        seen = torch.tensor(sorted(set(seq.token_ids)), dtype=torch.long, device=logits.device)
        picked = logits[seen]
        logits[seen] = torch.where(picked > 0, picked / p.repetition_penalty,
                                   picked * p.repetition_penalty)
    if (p.presence_penalty or p.frequency_penalty) and seq.output_ids:
        ids, counts = torch.tensor(seq.output_ids, device=logits.device).unique(return_counts=True)
        logits[ids] -= p.presence_penalty + p.frequency_penalty * counts.to(logits.dtype)
    return logits


def apply_bias_and_bans(logits: torch.Tensor, seq: Sequence, p: SamplingParams,
                        eos_ids: tuple[int, ...]) -> torch.Tensor:
    for token, bias in (p.logit_bias or {}).items():
        logits[token] += bias
    if len(seq.output_ids) < p.min_tokens:
        banned = list(p.stop_token_ids) + ([] if p.ignore_eos else list(eos_ids))
        if banned:
            logits[banned] = float("-inf")
    return logits


def truncate(logits: torch.Tensor, p: SamplingParams) -> torch.Tensor:
    """top-k, then top-p, then min-p; the most likely token always survives."""
    if p.top_k and 0 < p.top_k < logits.shape[-1]:
        kth = torch.topk(logits, p.top_k).values[-1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if p.top_p is not None and p.top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True)
        cum = sorted_logits.softmax(-1).cumsum(-1)
        drop = cum - sorted_logits.softmax(-1) >= p.top_p  # mass before this token already enough
        logits = logits.masked_fill(torch.zeros_like(drop).scatter(0, order, drop), float("-inf"))
    if p.min_p:
        probs = logits.softmax(-1)
        logits = logits.masked_fill(probs < p.min_p * probs.max(), float("-inf"))
    return logits


def sample_row(logits: torch.Tensor, seq: Sequence, eos_ids: tuple[int, ...],
               generator: torch.Generator | None, draft: int | None = None,
               draft_q: torch.Tensor | None = None) -> Sample:
    """One token from one row. With a draft token d (speculative decoding), sampling keeps
    the output distribution p unchanged (see _draw); greedy takes the argmax either way."""
    p = seq.params
    raw = logits
    logits = apply_bias_and_bans(logits.clone(), seq, p, eos_ids)
    logits = apply_penalties(logits, seq, p)
    for processor in seq.logits_processors:  # the request's, then its controls'
        logits = processor(seq.output_ids, logits)
    if torch.isnan(logits).any() or not torch.isfinite(logits).any():
        return Sample(token=-1, error="the model produced NaN logits for this request")
    if p.greedy:
        token = int(torch.argmax(logits))
    else:
        token = _draw(logits, p, generator, draft, draft_q)
    return _with_logprobs(Sample(token), raw, p)


def _draw(logits: torch.Tensor, p: SamplingParams, generator: torch.Generator | None,
          draft: int | None = None, draft_q: torch.Tensor | None = None) -> int:
    """Sample from the truncated distribution; extreme settings (a temperature that
    overflows, everything masked) fall back to the most likely token, never an exception.

    With a draft token d drawn from a distribution q (a draft model's; None: prompt lookup,
    whose d is certain), the standard rejection rule keeps the result distributed as p: take
    d with probability min(1, p(d) / q(d)), otherwise draw from max(0, p - q), renormalized."""
    probs = truncate(logits / p.temperature, p).softmax(-1)
    probs = torch.nan_to_num(probs, nan=0.0, posinf=0.0, neginf=0.0).clamp_(min=0)
    if not float(probs.sum()) > 0:
        return int(torch.argmax(logits))
    if draft is not None:
        q_d = float(draft_q[draft]) if draft_q is not None else 1.0
        accept = float(probs[draft]) / q_d if q_d > 0 else 1.0
        if float(torch.rand((), generator=generator, device=probs.device)) < accept:
            return draft
        if draft_q is None:
            probs[draft] = 0.0
        else:
            probs = (probs - draft_q[: probs.shape[-1]]).clamp_(min=0)
        if not float(probs.sum()) > 0:
            return draft
    return int(torch.multinomial(probs, 1, generator=generator))


def _with_logprobs(s: Sample, raw: torch.Tensor, p: SamplingParams) -> Sample:
    if p.logprobs is None:
        return s
    lp = raw.log_softmax(-1)
    s.logprob = float(lp[s.token])
    if p.logprobs > 0:
        values, ids = torch.topk(lp, p.logprobs)
        s.top_logprobs = dict(zip(ids.tolist(), values.tolist()))
    return s


def needs_row_processing(seq: Sequence) -> bool:
    p = seq.params
    bans = p.min_tokens and (p.stop_token_ids or not p.ignore_eos)  # min_tokens with nothing
    return bool(seq.logits_processors) or not (                   # to ban changes nothing
        p.greedy and p.logprobs is None and not p.logit_bias and not bans
        and p.repetition_penalty in (None, 1.0) and not p.presence_penalty
        and not p.frequency_penalty)


def greedy_tokens(logits: torch.Tensor) -> list[int]:
    """Each row's argmax (the first of equal values), -1 for a row holding a NaN."""
    if logits.device.type == "cpu" and logits.dtype == torch.float32 and kernels_available():
        return torch.ops.qwq.greedy_tokens(logits.contiguous()).tolist()  # ~20x torch's max
    # max takes a NaN over any number, so a row holds a NaN exactly when its largest value is
    # one; like argmax it picks the first of equal values, in a third of argmax's time on CPUs
    largest, picks = logits.max(-1)
    return picks.masked_fill(largest.isnan(), -1).tolist()


def sample(logits: torch.Tensor, seqs: list[Sequence], eos_ids: tuple[int, ...],
           generators: dict[int, torch.Generator]) -> list[Sample]:
    """One token for each row of logits (B, vocab)."""
    if not any(needs_row_processing(s) for s in seqs):
        return [Sample(t) if t >= 0 else Sample(-1, error="the model produced NaN logits for "
                                                          "this request")
                for t in greedy_tokens(logits)]
    return [_guarded(logits[i], s, eos_ids, generators.get(s.seq_id))
            for i, s in enumerate(seqs)]


class DraftRows:
    """The logits at a drafted sequence's last token and at each of its draft tokens. The
    engine takes one token per position, in order (token_at), after feeding the tokens before
    it through stop checks and reasoning controls, so penalties and logits processors see
    exactly the context they would see without speculation."""

    def __init__(self, seq: Sequence, logits: torch.Tensor | None, eos_ids: tuple[int, ...],
                 generator: torch.Generator | None, argmax: list[Sample] | None = None):
        self.seq, self.logits, self.eos_ids, self.generator = seq, logits, eos_ids, generator
        self.draft = list(seq.draft_ids)
        self.draft_probs = list(seq.draft_probs)  # a draft model's q per token, if sampled
        self.argmax = argmax  # plain greedy batch: every row's token, computed at once

    def token_at(self, i: int) -> Sample:
        if self.argmax is not None:
            return self.argmax[i]
        draft = self.draft[i] if i < len(self.draft) else None
        q = self.draft_probs[i] if draft is not None and self.draft_probs else None
        return _guarded(self.logits[i], self.seq, self.eos_ids, self.generator, draft, q)


def sample_drafted(logits: torch.Tensor, seqs: list[Sequence], eos_ids: tuple[int, ...],
                   generators: dict[int, torch.Generator]) -> list[Sample | DraftRows]:
    """Like sample, when some sequences carry a draft: 1 + len(draft) rows each, in order."""
    plain = not any(needs_row_processing(s) for s in seqs)
    if plain:
        quick = sample(logits, seqs[:1] * logits.shape[0], eos_ids, generators)
    out: list[Sample | DraftRows] = []
    row = 0
    for seq in seqs:
        count = 1 + len(seq.draft_ids)
        rows = DraftRows(seq, logits[row: row + count], eos_ids, generators.get(seq.seq_id),
                         quick[row: row + count] if plain else None)
        out.append(rows if seq.draft_ids else rows.token_at(0))
        row += count
    return out


def _guarded(logits: torch.Tensor, seq: Sequence, eos_ids: tuple[int, ...],
             generator: torch.Generator | None, draft: int | None = None,
             draft_q: torch.Tensor | None = None) -> Sample:
    """A request whose settings break sampling fails alone; the batch goes on."""
    try:
        return sample_row(logits, seq, eos_ids, generator, draft, draft_q)
    except (RuntimeError, ValueError, IndexError) as e:
        return Sample(token=-1, error=f"sampling failed for this request: {e}")
