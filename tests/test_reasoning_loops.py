"""Loop detection on synthetic token streams: loops are caught early, structured repetition is
left alone, and each action (stop, nudge, penalize) does what it says."""

import random
import time

import pytest
import torch
from loops import cycle_lines
from test_reasoning_helpers import FakeTokenizer, drive

from qwq.reasoning.budget import PhaseTracker
from qwq.reasoning.loops import (
    LoopControl,
    LoopDetector,
    PenalizingLoopControl,
    SentenceLoopDetector,
    TokenLoopDetector,
)

WORDS = [
    "alpha", "beta", "gamma", "delta", "epsilon", "zeta", "theta", "kappa", "lambda", "sigma",
    "omega", "river", "stone", "cloud", "light", "shadow", "number", "answer", "check", "again",
    "value", "result", "maybe", "think"
]


def prose(n_words, seed=0):
    rng = random.Random(seed)
    return " ".join(rng.choice(WORDS) for _ in range(n_words)) + ". "


def first_event(text, tok=None):
    """Index (in tokens) where the detector first fires on text, or None."""
    tok = tok or FakeTokenizer()
    det = LoopDetector()
    for i, t in enumerate(tok.encode(text)):
        if det.push(t, tok.decode([t]), i + 1):
            return i + 1
    return None


def test_exact_cycle_is_caught_within_a_few_copies():
    tok = FakeTokenizer()
    intro = tok.encode(prose(60))
    cycle = tok.encode("So the explanation means that the meaning is explained by itself. ")
    det = TokenLoopDetector()
    stream = intro + cycle * 20
    fired = next(i + 1 for i, t in enumerate(stream) if det.push(t))
    # three copies, or a short cycle repeated over the minimum run of 32 tokens
    assert len(intro) + len(cycle) < fired <= len(intro) + len(cycle) + max(2 * len(cycle), 32)


def test_cycle_of_several_sentences_is_one_long_period():
    tok = FakeTokenizer()
    cycle = tok.encode(prose(25, 1) + prose(30, 2) + prose(20, 3))
    det = TokenLoopDetector()
    events = [e for t in tok.encode(prose(40)) + cycle * 4 if (e := det.push(t))]
    assert events and events[0].period == len(cycle)
    assert events[0].end <= 40 + 3 * len(cycle)


def test_sentence_cycle_with_small_variations_is_caught():
    rng = random.Random(7)
    leads = ["Wait,", "Hmm,", "So", "Okay,", "Right,", "Well,"]
    sentences = ["the word hello in French is bonjour and that is the answer",
                 "let me double check the translation of the word again carefully"]
    text = prose(30) + " ".join(f"{rng.choice(leads)} {sentences[i % 2]}." for i in range(16))
    tok = FakeTokenizer()  # no exact period: only the sentence detector can see it
    exact = TokenLoopDetector()
    assert not any(exact.push(t) for t in tok.encode(text))
    assert first_event(text) is not None


def test_recurring_sentence_between_other_text_is_caught():
    probe = "Therefore the explanation of the explanation is still the same explanation."
    text = "".join(prose(8 + i, seed=i) + probe + " " for i in range(8))
    assert first_event(text) is not None


def _counting():
    return "\n".join(str(i) for i in range(1, 301))


def _primes():
    ps = [n for n in range(2, 3000) if all(n % d for d in range(2, int(n ** 0.5) + 1))]
    return ", ".join(map(str, ps))


def _times_table():
    return "\n".join(f"{a} x {b} = {a * b}" for a in range(1, 13) for b in range(1, 13))


def _table():
    rng = random.Random(3)
    names = ["Alice", "Bob", "Carol", "Dan", "Eve", "Frank", "Grace", "Heidi", "Ivan", "Judy"]
    rows = [f"| {n}{i} | {rng.randint(18, 90)} | {rng.randint(1000, 9999)} | yes |"
            for i in range(12) for n in names]
    return "| name | age | id | ok |\n|---|---|---|---|\n" + "\n".join(rows)


def _code():
    methods = "\n".join(f"    def get_{w}(self):\n        return self._{w}\n" for w in WORDS)
    return f"```python\nclass Record:\n{methods}```"


def _translations():
    pairs = [("Spanish", "hola"), ("French", "bonjour"), ("German", "hallo"),
             ("Italian", "ciao"), ("Portuguese", "olá"), ("Dutch", "hallo"),
             ("Swedish", "hej"), ("Finnish", "hei"), ("Polish", "cześć"), ("Turkish", "merhaba"),
             ("Hawaiian", "aloha"), ("Swahili", "jambo"), ("Japanese", "konnichiwa")]
    return "\n".join(f"- In {lang}, hello is \"{word}\"." for lang, word in pairs)


def _steps():
    return "\n".join(f"Step {i}: divide {n} by {d}; the remainder is {n % d}, so {d} is "
                     f"{'a' if n % d == 0 else 'not a'} divisor."
                     for i, (n, d) in enumerate(((91, k) for k in range(2, 40)), 1))


@pytest.mark.parametrize("make", [_counting, _primes, _times_table, _table, _code,
                                  _translations, _steps])
def test_structured_repetition_is_not_a_loop(make):
    assert first_event(make()) is None


def test_detection_is_cheap_per_token():
    tok = FakeTokenizer()
    stream = tok.encode(_table() + _steps() + _code() + _counting()) * 2
    det = LoopDetector()
    start = time.perf_counter()
    for i, t in enumerate(stream):
        det.push(t, tok.decode([t]), i + 1)
    per_token = (time.perf_counter() - start) / len(stream)
    assert per_token < 50e-6


def _looping_model(tok):
    return tok.encode(prose(40) + "The explanation explains the explanation itself. " * 100)


def test_stop_action_finishes_with_loop_reason_and_detail():
    tok = FakeTokenizer()
    control = LoopControl(tok, PhaseTracker("plain"), action="stop")
    out, _, reason, actions = drive([control], tok, _looping_model(tok))
    assert reason == "loop" and actions[0].detail["repeats"] >= 2
    assert len(out) < 150


def test_nudge_forces_a_steer_then_stops_a_model_that_resumes_the_loop():
    tok = FakeTokenizer()
    control = LoopControl(tok, PhaseTracker("plain"), action="nudge")
    _out, text, reason, actions = drive([control], tok, _looping_model(tok))
    assert reason == "loop"
    assert [type(a).__name__ for a in actions] == ["Force", "Stop"]
    assert "Let me conclude.\n\n**Final Answer**" in text
    assert actions[1].detail["loop"] == "resumed"
    steer_end = text.index("**Final Answer**")
    assert len(tok.encode(text[steer_end:])) < 30  # the resumed loop is cut within a few tokens


def test_second_nudge_in_the_answer_uses_the_answer_steer():
    tok = FakeTokenizer()
    control = LoopControl(tok, PhaseTracker("plain"), action="nudge", max_interventions=2)
    _, text, reason, actions = drive([control], tok, _looping_model(tok))
    assert [type(a).__name__ for a in actions] == ["Force", "Force", "Stop"]
    assert "I will stop here" in text and reason == "loop"


def test_nudge_lets_a_model_that_recovers_finish():
    tok = FakeTokenizer()
    control = LoopControl(tok, PhaseTracker("plain"), action="nudge")
    model = tok.encode(prose(30) + "It loops around and around. " * 6 + prose(80, 5))
    _, _, reason, actions = drive([control], tok, model)
    assert reason == "stop" and len(actions) == 1


def test_stop_with_conclude_first_forces_a_final_answer():
    tok = FakeTokenizer()
    control = LoopControl(tok, PhaseTracker("think"), action="stop", conclude=True)
    _, text, reason, actions = drive([control], tok, _looping_model(tok))
    assert "</think>" in text and reason == "loop" and len(actions) == 2


def test_penalize_lowers_the_token_that_continues_the_cycle():
    tok = FakeTokenizer()
    control = PenalizingLoopControl(tok, PhaseTracker("plain"))
    stream = _looping_model(tok)
    out = []
    for t in stream:
        out.append(t)
        if control.on_token(t, tok.decode(out), out) is None and control.until:
            break
    logits = torch.zeros(tok.vocab_size + 5)
    after = control.process_logits(out, logits.clone())
    nxt = out[-control.period]
    assert after[nxt] <= -10 and after[tok.vocab_size + 1] == 0
    late = out + [0] * (control.until - len(out))
    assert torch.equal(control.process_logits(late, logits.clone()), logits)


def test_rows_that_differ_only_in_their_counter_are_a_loop():
    rows = ["Liam Johnson,liam@example.com,35", "Sophie Davis,sophie@example.com,32",
            "Olivia Davis,olivia@example.com,33"]
    csv = "```csv\n" + "".join(f"{i},{rows[i % 3]}\n" for i in range(1, 30))
    assert first_event(csv) is not None


def test_detections_are_counted_in_metrics():
    from qwq.reasoning import metrics
    tok = FakeTokenizer()
    before = metrics.value("loop_detected", action="stop")
    drive([LoopControl(tok, PhaseTracker("plain"), action="stop")], tok, _looping_model(tok))
    assert metrics.value("loop_detected", action="stop") == before + 1


def test_a_line_with_no_sentence_end_is_not_rescanned_forever():
    det = SentenceLoopDetector()
    for i in range(5000):
        det.push_text(f" w{i}", i)
    assert len(det._pending) <= det.max_sentence_chars + 10


NAMES = ["Dutch", "Polish", "Greek", "Czech", "Danish", "Irish", "Welsh", "Basque", "Catalan",
         "Breton", "Maltese", "Latvian", "Slovak", "Croatian", "Serbian", "Bosnian"]
THINGS = ["bread", "cheese", "tulips", "bikes", "canals", "windmills", "herring", "clogs"]


def _item(i):
    """The i-th of up to 128 distinct list items."""
    return f"**{NAMES[i % 16]}** is known for its {THINGS[i // 16 % 8]} and {THINGS[i % 8]}"


# list styles (bench/loops.py's cycle_lines): item i of the cycle under counter n, as its lines
STYLES = {
    "numbered": lambda n, i: [f"{n}. {_item(i)}."],
    "step": lambda n, i: [f"Step {n}: consider how {_item(i)}."],
    "table": lambda n, i: [f"| {n} | {_item(i)} | yes |"],
    # a numbered title, its description on the next line
    "two-line": lambda n, i: [f"{n}. **Fact {NAMES[i % 16]}**",
                              f"   It is known for its {THINGS[i % 8]} and {THINGS[i // 8]}."],
}


@pytest.mark.parametrize("period,style", [(2, "two-line"), (3, "step"), (5, "table"),
                                          (9, "numbered"), (16, "two-line"), (24, "step"),
                                          (33, "numbered"), (48, "table"), (64, "two-line"),
                                          (64, "step")])
def test_counter_cycles_up_to_64_lines_are_caught_within_three_cycles(period, style):
    tok = FakeTokenizer()
    lines = cycle_lines(period, 6, STYLES[style])
    text = prose(40) + "\n" + "\n".join(lines) + "\n"
    fired = first_event(text, tok)
    three_copies = len(tok.encode(prose(40) + "\n" + "\n".join(lines[:3 * period]) + "\n"))
    assert fired is not None and fired <= three_copies + 2, (fired, three_copies)


def _countries():
    names = [f"{a}{b}land" for a in ("Nor", "Swe", "Fin", "Ice", "Ger", "Pol", "Hun", "Ire")
             for b in ("a", "o", "e", "i", "u", "y", "ar", "or")]
    return "\n".join(f"{i}. **{name}**: capital {name[:3]}ville" for i, name in
                     enumerate(names, 1))


def _template(lines_per_item):
    """A template of a few lines filled in with a counter: counting, not a loop."""
    shape = ["Week {n}:", "- Read chapter {n} of the book and take notes.",
             "- Solve exercise set {n} from the workbook."][:lines_per_item]
    return "\n".join(line.format(n=n) for n in range(1, 60) for line in shape)


def _squares():
    return "\n".join(f"{n}. The square of {n} is {n * n}." for n in range(1, 80))


@pytest.mark.parametrize("make", [_countries, lambda: _template(2), lambda: _template(3),
                                  _squares, _times_table, _counting, _primes])
def test_lists_that_progress_stay_quiet(make):
    assert first_event(make()) is None
