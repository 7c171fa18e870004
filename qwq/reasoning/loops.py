"""Online loop detection over one sequence's token stream.

Two detectors, each O(1)-ish per token:
- TokenLoopDetector: the output ends in a span that repeats with period p (tokens[i] ==
  tokens[i - p] for a long enough run). Candidate periods come from n-gram recurrences; each
  candidate dies at its first mismatch, so few are alive at a time. Catches greedy loops,
  including cycles of several sentences (the period is then the cycle's length).
- SentenceLoopDetector: completed sentences, normalized (case, spacing, punctuation), compared
  as word sets with their numbers kept exact. Fires on a cycle of 1-64 near-identical sentences
  repeated (at its third copy), or on one long sentence recurring many times in a window.
  Catches loops that are not token-exact. Lines count as sentences (a list item, a CSV row, a
  line of code) with their own leading counter or bullet left out. A cycle of 2 or more lines
  may also differ from its last copy by a counter that runs on: every number that changed,
  changed by the same step of 2 or more (a list of 9 items repeating as items 55-63, 64-72).

Legitimate structured repetition (counting, a list of primes, a table) repeats its shape but
not its content: numbers differ, so neither token runs nor number-exact sentences match. A
template filled in with a counter ("Week 1 / Read chapter 1", "Week 2 / ...") repeats with a
step of 1 per copy of its smallest period, which is counting, not a loop.
"""

from __future__ import annotations

import re
from collections import Counter, deque
from dataclasses import dataclass

import torch

from qwq.logits_processor import LogitsProcessor
from qwq.reasoning import metrics
from qwq.reasoning.actions import Action, Force, SequenceControl, Stop


@dataclass
class LoopEvent:
    kind: str  # "tokens" (exact periodic span) or "sentences" (cycle or recurrence of sentences)
    period: int  # tokens in one cycle (estimated for sentence events)
    repeats: float  # copies of the cycle seen
    start: int  # output index where the repeated span begins
    end: int  # output length when detected

    def as_detail(self) -> dict:
        return {"loop": self.kind, "period": self.period, "repeats": round(self.repeats, 1),
                "start": self.start, "end": self.end}


class TokenLoopDetector:
    def __init__(self, ngram: int = 8, max_period: int = 1024, min_run: int = 32,
                 repeats: int = 3, long_period: int = 48, long_repeats: int = 2):
        self.ngram, self.max_period, self.min_run = ngram, max_period, min_run
        self.repeats, self.long_period, self.long_repeats = repeats, long_period, long_repeats
        self.tokens: list[int] = []
        self._last: dict[int, int] = {}  # hash of the n-gram ending at i -> latest i
        self._runs: dict[int, int] = {}  # candidate period -> tokens matching one period back

    def reset(self) -> None:
        """Forget the candidates (after an intervention); the history stays for new ones."""
        self._runs.clear()

    def push(self, token: int) -> LoopEvent | None:
        t = self.tokens
        t.append(token)
        i = len(t) - 1
        for p in list(self._runs):
            if t[i - p] == token:
                self._runs[p] += 1
            else:
                del self._runs[p]
        if i + 1 >= self.ngram:
            self._add_candidate(i)
        if i % 4096 == 0:
            self._prune(i)
        return self._check(i)

    def _add_candidate(self, i: int) -> None:
        gram = tuple(self.tokens[i + 1 - self.ngram:i + 1])
        key = hash(gram)
        j = self._last.get(key)
        self._last[key] = i
        if j is None or i - j > self.max_period or (i - j) in self._runs:
            return
        if tuple(self.tokens[j + 1 - self.ngram:j + 1]) == gram:
            self._runs[i - j] = self.ngram

    def _prune(self, i: int) -> None:
        old = i - self.max_period
        self._last = {k: v for k, v in self._last.items() if v >= old}

    def _check(self, i: int) -> LoopEvent | None:
        for p, run in self._runs.items():
            copies = self.long_repeats if p >= self.long_period else self.repeats
            if run >= max(self.min_run, (copies - 1) * p):
                start = i + 1 - run - p
                return LoopEvent("tokens", p, (run + p) / p, start, i + 1)
        return None


_TERMINATOR = re.compile(r"(?<=[.!?])\s+|(?<=[。！？])|\n+")
_LIST_NUMBER = re.compile(r"\s*\d{1,4}[.)]?")
_NON_WORD = re.compile(r"[\W_]+", re.UNICODE)
_NUMBER = re.compile(r"\d+(?:[.,]\d+)*")
# A line's own counter or bullet ("24. ", "13,", "- "), and the filler words loops vary at the
# start of a sentence: a loop that only changes these is still a loop
_LEAD = re.compile(r"^\s*(?:(?:\d+[.),:]?|[-*•>#|]+)\s*)?(?:(?:wait|hmm+|so|ok|okay|well|right|"
                   r"but|and|now|then|actually|alternatively|again|yes|no)\b[,.!]?\s*)*",
                   re.IGNORECASE)


@dataclass
class _Sentence:
    key: str  # normalized text
    shape: str  # the key with each number as "#"
    words: frozenset[str]
    numbers: tuple[str, ...]
    end_token: int  # output length when the sentence completed

    def similar(self, other: _Sentence, threshold: float) -> bool:
        if self.key == other.key:
            return True
        if self.numbers != other.numbers or min(len(self.words), len(other.words)) < 4:
            return False
        union = len(self.words | other.words)
        return len(self.words & other.words) / union >= threshold

    def counter_step(self, other: _Sentence) -> int | None:
        """The step by which every number that differs from other's has moved on, when the
        two differ in nothing else and all by the same step; None otherwise."""
        if self.shape != other.shape:
            return None
        moved = [(a, b) for a, b in zip(self.numbers, other.numbers) if a != b]
        if not all(a.isdigit() and b.isdigit() for a, b in moved):
            return None
        steps = {int(a) - int(b) for a, b in moved}
        return steps.pop() if len(steps) == 1 else None


class SentenceLoopDetector:
    def __init__(self, max_cycle: int = 64, repeats: int = 3, min_chars: int = 3,
                 min_span_chars: int = 120, similarity: float = 0.85, recur: int = 5,
                 recur_min_chars: int = 40, window: int = 80, max_sentence_chars: int = 1000):
        self.max_cycle, self.repeats, self.min_chars = max_cycle, repeats, min_chars
        self.max_sentence_chars = max_sentence_chars
        self.min_span_chars, self.similarity = min_span_chars, similarity
        self.recur, self.recur_min_chars = recur, recur_min_chars
        self.sentences: deque[_Sentence] = deque(maxlen=max(window, max_cycle * repeats + 1))
        self._counts: Counter[str] = Counter()
        self._runs = [0] * (max_cycle + 1)  # per cycle length m: sentences matching m back
        self._steps = [0] * (max_cycle + 1)  # and the counter step of that run (0: none)
        self._counting: set[int] = set()  # cycle lengths whose run is a counting template
        self._pending = ""

    def reset(self) -> None:
        self._runs = [0] * (self.max_cycle + 1)
        self._steps = [0] * (self.max_cycle + 1)
        self._counting.clear()
        self._counts.clear()
        self.sentences.clear()

    def push_text(self, delta: str, num_tokens: int) -> LoopEvent | None:
        """Feed new text; num_tokens is the output length after it."""
        self._pending += delta
        parts = _TERMINATOR.split(self._pending)
        self._pending = parts.pop()
        event, marker = None, ""
        for part in parts:
            if _LIST_NUMBER.fullmatch(part):  # "24." of "24. Russia": not a sentence
                marker += part + " "
                continue
            event = self._push_sentence(marker + part, num_tokens) or event
            marker = ""
        self._pending = marker + self._pending
        if len(self._pending) > self.max_sentence_chars:  # no end in sight: take it as one
            event = self._push_sentence(self._pending, num_tokens) or event
            self._pending = ""
        return event

    def _push_sentence(self, raw: str, num_tokens: int) -> LoopEvent | None:
        key = _NON_WORD.sub(" ", _LEAD.sub("", raw.lower(), count=1)).strip()
        if len(key) < self.min_chars:
            return None
        s = _Sentence(key, _NUMBER.sub("#", key), frozenset(_NUMBER.sub(" ", key).split()),
                      tuple(_NUMBER.findall(key)), num_tokens)
        if len(self.sentences) == self.sentences.maxlen:
            self._counts[self.sentences[0].key] -= 1
        self.sentences.append(s)
        self._counts[key] += 1
        return self._cycle(num_tokens) or self._recurrence(s, num_tokens)

    def _cycle(self, num_tokens: int) -> LoopEvent | None:
        seq = list(self.sentences)
        last = seq[-1]
        for m in range(1, min(self.max_cycle, len(seq) - 1) + 1):
            if not self._extend(m, self._step(last, seq[-1 - m], m)):
                continue
            run = self._runs[m]
            if run < (self.repeats - 1) * m or m in self._counting:
                continue
            if self._steps[m] and not self._counter_loop(seq, m):
                self._counting.add(m)  # a template counting up, for as long as this run lasts
                continue
            if not self._long_enough(seq[-(run + m):]):
                continue
            start = seq[-(run + m) - 1].end_token if len(seq) > run + m else 0
            period = max(1, last.end_token - seq[-1 - m].end_token)
            return LoopEvent("sentences", period, (run + m) / m, start, num_tokens)
        return None

    def _step(self, last: _Sentence, other: _Sentence, m: int) -> int | None:
        """0: the sentence repeats the one m back; a counter step: it repeats it but for a
        counter (cycles of 2 or more only: one line with a counter is counting); None."""
        if last.similar(other, self.similarity):
            return 0
        return last.counter_step(other) if m >= 2 else None

    def _long_enough(self, span: list[_Sentence]) -> bool:
        """Does the repeated span hold min_span_chars (counted from its end, stopping there)?"""
        chars = 0
        for x in reversed(span):
            chars += len(x.key)
            if chars >= self.min_span_chars:
                return True
        return False

    def _extend(self, m: int, step: int | None) -> bool:
        """Grow (or end) the run of cycle length m; a new counter step starts a new run."""
        if step is None:
            self._runs[m] = self._steps[m] = 0
            self._counting.discard(m)
            return False
        if step and self._steps[m] not in (0, step):
            self._runs[m] = 0
            self._counting.discard(m)
        self._steps[m] = step or self._steps[m]
        self._runs[m] += 1
        return True

    def _counter_loop(self, seq: list[_Sentence], m: int) -> bool:
        """A cycle of m lines that differs from its last copy by a counter is a loop when the
        counter moves on by 2 or more (several items per cycle) and m is the cycle's smallest
        length: a template of q lines filled in with a counter also matches at m = 2q, 3q..."""
        if self._steps[m] < 2:
            return False
        shapes = [x.shape for x in seq[-2 * m:]]
        return not any(m % q == 0 and all(shapes[-j] == shapes[-j - q] for j in range(1, m + 1))
                       for q in range(1, m))

    def _recurrence(self, s: _Sentence, num_tokens: int) -> LoopEvent | None:
        if len(s.key) < self.recur_min_chars or self._counts[s.key] < self.recur:
            return None
        ends = [x.end_token for x in self.sentences if x.key == s.key]
        period = max(1, (ends[-1] - ends[0]) // max(1, len(ends) - 1))
        return LoopEvent("sentences", period, float(len(ends)), ends[0], num_tokens)


class LoopDetector:
    """Both detectors over one sequence: feed each new token with the text it added."""

    def __init__(self, tokens: TokenLoopDetector | None = None,
                 sentences: SentenceLoopDetector | None = None):
        self.tokens = tokens or TokenLoopDetector()
        self.sentences = sentences or SentenceLoopDetector()

    def push(self, token: int, delta_text: str, num_tokens: int) -> LoopEvent | None:
        exact = self.tokens.push(token)
        fuzzy = self.sentences.push_text(delta_text, num_tokens)
        return exact or fuzzy

    def reset(self) -> None:
        self.tokens.reset()
        self.sentences.reset()


LOOP_ACTIONS = ("off", "stop", "nudge", "penalize")
# A steer toward concluding, by where the sequence is: still reasoning (per style), or already
# answering (then the steer only says the repetition is over).
STEER_TEXT = {"think": "\n\nI keep going around in circles. Let me stop and answer.\n</think>\n\n",
              "plain": "\n\nI keep repeating myself. Let me conclude.\n\n**Final Answer**\n\n",
              "answer": "\n\nI am repeating myself, so I will stop here.\n\n"}


class ResumeWatch:
    """After an intervention: is the model writing the loop it was just pulled out of? Fires
    when `needed` of the last `window` tokens end an n-gram of that loop; much sooner than the
    detectors could see a fresh loop."""

    def __init__(self, ngram: int = 4, window: int = 16, needed: int = 12):
        self.ngram, self.window, self.needed = ngram, window, needed
        self.grams: set[tuple[int, ...]] = set()
        self._recent: list[int] = []
        self._hits: deque[bool] = deque(maxlen=window)

    def arm(self, loop_tokens: list[int]) -> None:
        n = self.ngram
        self.grams = {tuple(loop_tokens[i:i + n]) for i in range(len(loop_tokens) - n + 1)}
        self._recent, self._hits = [], deque(maxlen=self.window)

    def push(self, token: int) -> bool:
        if not self.grams:
            return False
        self._recent = (self._recent + [token])[-self.ngram:]
        self._hits.append(tuple(self._recent) in self.grams)
        return sum(self._hits) >= self.needed


class LoopControl(SequenceControl):
    """Runs the detector on every token; on a loop: stop, nudge (force a steer), or penalize.

    Each action may be taken max_interventions times; the next loop after that (a fresh one, or
    the same one resumed) stops the sequence. With conclude, "stop" first forces a final-answer
    lead-in when no answer exists.
    """

    def __init__(self, tokenizer, phase, action: str = "nudge", conclude: bool = False,
                 max_interventions: int = 1, detector: LoopDetector | None = None):
        self.tokenizer, self.phase, self.action = tokenizer, phase, action
        self.conclude, self.max_interventions = conclude, max_interventions
        self.detector = detector or LoopDetector()
        self.watch = ResumeWatch()
        self.events: list[LoopEvent] = []
        self.interventions = 0
        self._seen_tokens = 0
        self._seen_chars = 0

    def on_token(self, token_id: int, text: str, output_ids: list[int]) -> Action:
        event = self._feed(text, output_ids)
        if event is None:
            return None
        self.events.append(event)
        self.detector.reset()
        self.watch.arm(output_ids[event.start:event.end])
        metrics.inc("loop_detected", action=self.action)
        return self._act(event, self.phase.update(text), output_ids)

    def _feed(self, text: str, output_ids: list[int]) -> LoopEvent | None:
        event = None
        last = len(output_ids) - 1
        for i in range(self._seen_tokens, len(output_ids)):
            delta = text[self._seen_chars:] if i == last else ""
            event = self.detector.push(output_ids[i], delta, i + 1) or event
            if self.watch.push(output_ids[i]) and event is None:
                event = LoopEvent("resumed", self.events[-1].period, 1.0, i + 1 - self.watch.window,
                                  i + 1)
        self._seen_tokens, self._seen_chars = len(output_ids), len(text)
        return event

    def _act(self, event: LoopEvent, answered: bool, output_ids: list[int]):
        detail = event.as_detail()
        if self.action == "stop":
            if self.conclude and not answered and not self.interventions:
                self.interventions += 1
                return Force(self._encode(STEER_TEXT[self.phase.style]))
            return Stop("loop", detail)
        if self.interventions >= self.max_interventions:
            return Stop("loop", detail)
        self.interventions += 1
        if self.action == "nudge":
            return Force(self._encode(STEER_TEXT["answer" if answered else self.phase.style]))
        self.start_penalty(event, output_ids)
        return None

    def start_penalty(self, event: LoopEvent, output_ids: list[int]) -> None:
        """Only the penalizing variant acts on this (see PenalizingLoopControl)."""

    def _encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, allow_special=True)


class PenalizingLoopControl(LoopControl):
    """loop_control="penalize": after a loop, for a while lower the logits of the tokens of the
    repeated cycle (mildly) and of the token that would continue the cycle (strongly)."""

    def __init__(self, *args, mild: float = 2.0, strong: float = 10.0,
                 max_interventions: int = 2, **kwargs):
        super().__init__(*args, action="penalize", max_interventions=max_interventions, **kwargs)
        self.mild, self.strong = mild, strong
        self.until = 0
        self.period = 0
        self.cycle: list[int] = []
        self._cycle_tensor: torch.Tensor | None = None

    def start_penalty(self, event: LoopEvent, output_ids: list[int]) -> None:
        self.period = max(1, min(event.period, len(output_ids)))
        self.cycle = sorted(set(output_ids[-self.period:]))
        self._cycle_tensor = None
        self.until = len(output_ids) + max(64, 2 * self.period)

    def logits_processor(self) -> LogitsProcessor:
        return self.process_logits

    def process_logits(self, output_ids: list[int], logits: torch.Tensor) -> torch.Tensor:
        if len(output_ids) >= self.until or not self.cycle:
            return logits
        if self._cycle_tensor is None or self._cycle_tensor.device != logits.device:
            self._cycle_tensor = torch.tensor(self.cycle, dtype=torch.long, device=logits.device)
        logits[self._cycle_tensor] -= self.mild
        logits[output_ids[-self.period]] -= self.strong
        return logits
