"""Loop detection on the demo model at greedy: detection rate, false alarms, tokens saved; the
counter-cycle set and synthetic counter cycles of period 2-64; the detector's cost per token.

Sets:
- main: 38 prompts (25 that invite loops, 13 of structured repetition), max_tokens 320.
- counter: list prompts whose greedy answers loop as a cycle of 2 or more lines that repeats
  with its counter running on, and lists that progress (must stay quiet), max_tokens 800.
- synthetic: counter cycles of every period 2-64 in four list styles (numbered lines, a counter
  inside the line, table rows, two-line items), and progressing lists, through the real
  tokenizer (no model): detected, and after how many copies of the cycle.

Every model prompt runs once per loop_control mode, all prompts of a mode batched through the
engine. Ground truth comes from the "off" run by retrospective checks that do not use the
online detector: an answer repeats itself when most of the last 30% of its text repeats text
written before it (line counters and bullets left out), or when its last lines repeat as a
cycle of 2-64 lines that differ only in numbers, with a counter that moves on by 2 or more a
cycle (several items repeating, not one template filled in with 1, 2, 3...). It loops when it
repeats itself up to max_tokens; the answers that repeat and then stop on their own are
counted apart; the rest are clean, and any action on them is a false alarm.

    python bench/loops.py [--sets main,counter,synthetic] [--modes off,stop,nudge,penalize]
                          [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import time
from collections.abc import Callable

from common import machine, today

EXPLAIN = ["gravity", "democracy", "inflation", "entropy", "recursion", "love", "photosynthesis",
           "electricity", "evolution"]
LIST_EVERY = ["country in the world and its capital", ("element of the periodic table with its "
              "symbol"), "city in Europe and its country", ("language in the world and where it "
              "is spoken"), "word in the English language and its meaning", ("river in the world "
              "and its length"), "US state and its capital"]
OTHER = [
    'Translate the word "water" into every language in the world, one per line.',
    'Translate the word "cat" into all the languages you know.',
    'Give me the translation of "good morning" in 100 languages.',
    "Write an HTML unordered list of 15 planets and moons.",
    "For each letter of the alphabet, give one animal whose name starts with that letter.",
    "Write a CSV with 20 rows of fake users: id, name, email, age.",
    "Explain your explanation of what an explanation is.",
    "Describe the description of a description.",
    "Give me an endless list of reasons to learn Python.",
]
# Structured but legitimate repetition: the shape repeats, the content does not.
STRUCTURED = [
    "Count from 1 to 100.", "List the first 50 prime numbers.",
    "Print the multiplication table of 7 from 7x1 to 7x20.",
    "Make a markdown table of 15 countries with their capital and population.",
    "Write a Python class Person with a getter and setter for each of 8 fields.",
    "List the numbers 1 to 40 with their squares.", "List the first 30 Fibonacci numbers.",
    "Write the numbers 1 to 32 in binary.",
    "Write SQL INSERT statements for 10 rows of a products table.",
    "Write a JSON array of 10 objects describing books with title, author and year.",
    "Write 10 pytest test functions for an add(a, b) function, each with different numbers.",
    "List the first 25 even numbers and their cubes.",
    "Give a table of the days of the week in English, French, Spanish and German.",
]
MAIN = ([f"Explain the explanation of the explanation of {x}." for x in EXPLAIN]
        + [f"List every {x}." for x in LIST_EVERY] + OTHER + STRUCTURED)
# Greedy answers of the demo model that loop as a counter cycle (found by running candidates
# with loop_control="off"; the period each shows is in BENCHMARKS.md), then lists that progress.
COUNTER = [
    "List 100 languages and how to say hello in each.",
]
PROGRESS = [
    "Count from 1 to 300, one number per line.",
    "List the first 100 prime numbers.",
    "Write the multiplication tables of 6, 7 and 8, from x1 to x12.",
    "List 60 countries of the world with their capitals, numbered.",
    ("Write a 40-week study plan: for each week, a line with the week number and a line with "
     "the chapter to read."),
    "List the numbers from 1 to 80 with their squares and cubes.",
]
SETS = {"main": (MAIN, 320), "counter": (COUNTER + PROGRESS, 800)}

_COUNTER = re.compile(r"^[ \t]*(?:\d+[.),:]?|[-*•>#|]+)[ \t]*", re.MULTILINE)
_DIGITS = re.compile(r"\d+")


def ends_in_loop(text: str, tail: float = 0.3, cover: float = 0.75, width: int = 32) -> bool:
    """Nearly every `width`-character window of the tail (line counters and bullets left out)
    already appeared earlier in the text."""
    t = re.sub(r"\s+", " ", _COUNTER.sub("", text.lower()))
    start = int(len(t) * (1 - tail))
    seen = {t[j:j + width] for j in range(start)}  # windows that begin before the tail
    covered = total = 0
    for i in range(start, len(t) - width + 1):
        window = t[i:i + width]
        covered += window in seen
        total += 1
        seen.add(window)
    return total > 0 and covered / total >= cover


def counter_cycle(text: str, tail: float = 0.3, max_period: int = 64) -> int | None:
    """The period in lines of a counter cycle the text ends in: its last lines (the cut-off
    last one left out) repeat with numbers masked, over at least the tail's share of the lines
    and two copies, with two or more distinct lines per copy, and the numbers of a line and of
    its copy one cycle back differ by one step of 2 or more. None when it does not."""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()][:-1]
    masked = [_DIGITS.sub("#", ln) for ln in lines]
    for p in range(1, min(max_period, len(lines) // 3) + 1):
        run = 0
        while run < len(lines) - p and masked[-1 - run] == masked[-1 - run - p]:
            run += 1
        if run < max(2 * p, tail * len(lines)) or len(set(masked[-p:])) < 2:
            continue
        steps = {int(a) - int(b) for j in range(1, run + 1)
                 for a, b in zip(_DIGITS.findall(lines[-j]), _DIGITS.findall(lines[-j - p]))
                 if a != b}
        if len(steps) == 1 and steps.pop() >= 2:
            return p
    return None


class RecordingFactory:
    """The engine's control factory, keeping each sequence's controls for inspection."""

    def __init__(self, inner):
        self.inner, self.made = inner, []

    def __call__(self, params, tokenizer, prompt_ids=None):
        controls = self.inner(params, tokenizer, prompt_ids)
        self.made.append(controls)
        return controls


def run_mode(llm, prompts: list[str], mode: str, max_tokens: int) -> tuple[list[dict], float]:
    from qwq import SamplingParams
    from qwq.reasoning.loops import LoopControl
    factory = llm.engine.control_factory
    factory.made.clear()
    params = SamplingParams(temperature=0, max_tokens=max_tokens, loop_control=mode,
                            conclude=False)
    start = time.perf_counter()
    outs = llm.chat([[{"role": "user", "content": p}] for p in prompts], params)
    elapsed = time.perf_counter() - start
    rows = []
    for prompt, out, controls in zip(prompts, outs, factory.made):
        c = out.outputs[0]
        loop = next((x for x in controls if isinstance(x, LoopControl)), None)
        event = loop.events[0] if loop and loop.events else None
        rows.append({"prompt": prompt, "tokens": len(c.token_ids), "finish": c.finish_reason,
                     "detected_at": event.end if event else None,
                     "loop_start": event.start if event else None, "text": c.text,
                     "token_ids": list(c.token_ids)})
    return rows, elapsed


def label(row: dict) -> str:
    """"loop": ends repeating itself at max_tokens; "ended": repeats itself, then stops on its
    own; "clean": its end does not repeat what came before."""
    repeats = ends_in_loop(row["text"]) or counter_cycle(row["text"]) is not None
    if not repeats:
        return "clean"
    return "loop" if row["finish"] == "length" else "ended"


def summarize(results: dict[str, list[dict]]) -> dict:
    off = results["off"]
    labels = [label(r) for r in off]
    probe = results.get("stop") or results.get("nudge") or results.get("penalize")
    hit = [r["detected_at"] is not None for r in probe]
    loops = [i for i, t in enumerate(labels) if t == "loop"]
    ended = [i for i, t in enumerate(labels) if t == "ended"]
    clean = [i for i, t in enumerate(labels) if t == "clean"]
    summary = {"prompts": len(off), "looping": len(loops), "ended_loops": len(ended),
               "ended_loops_caught": sum(hit[i] for i in ended),
               "detection_rate": sum(hit[i] for i in loops) / max(1, len(loops)),
               "false_positive_rate": sum(hit[i] for i in clean) / max(1, len(clean)),
               "false_positives": [off[i]["prompt"] for i in clean if hit[i]],
               "missed": [off[i]["prompt"] for i in loops if not hit[i]],
               "detect_latency_tokens": statistics.median(
                   [probe[i]["detected_at"] - probe[i]["loop_start"] for i in loops if hit[i]]
                   or [0]),
               "detected_at_tokens": statistics.median(
                   [probe[i]["detected_at"] for i in loops if hit[i]] or [0]),
               "periods": {off[i]["prompt"]: counter_cycle(off[i]["text"])
                           for i in loops + ended},
               "modes": {}}
    base = sum(off[i]["tokens"] for i in loops)
    base_ended = sum(off[i]["tokens"] for i in ended)
    for mode, rows in results.items():
        used = sum(rows[i]["tokens"] for i in loops)
        used_ended = sum(rows[i]["tokens"] for i in ended)
        summary["modes"][mode] = {
            "loop_prompt_tokens": used,
            "tokens_saved": (base - used) / max(1, base),
            "ended_loop_tokens_saved": (base_ended - used_ended) / max(1, base_ended),
            "ended_without_length": sum(rows[i]["finish"] != "length" for i in loops),
            "still_ends_in_loop": sum(label(rows[i]) == "loop" for i in loops),
            "clean_prompts_acted_on": sum(rows[i]["detected_at"] is not None for i in clean),
            # greedy output that moved with no control acting: batch composition differs
            "clean_prompts_differing": sum(rows[i]["text"] != off[i]["text"]
                                           and rows[i]["detected_at"] is None for i in clean)}
    return summary


def print_report(name: str, summary: dict, times: dict[str, float], max_tokens: int,
                 quant: str) -> None:
    print(f"\n# set {name}: loop control on the demo model (quantize={quant}), greedy, "
          f"max_tokens={max_tokens} ({today()}, {machine()})")
    print(f"{summary['prompts']} prompts, {summary['looping']} loop to max_tokens at greedy "
          f"(off run); {summary['ended_loops']} more repeat themselves and then stop on their "
          f"own, {summary['ended_loops_caught']} of them caught")
    print(f"detection rate {summary['detection_rate']:.0%}, false-positive rate "
          f"{summary['false_positive_rate']:.0%}, detected a median "
          f"{summary['detect_latency_tokens']} tokens after the loop began "
          f"(at token {summary['detected_at_tokens']})")
    print(f"missed: {summary['missed']}; false positives: {summary['false_positives']}")
    print("counter-cycle periods (lines): " + ", ".join(
        f"{p}" for p in summary["periods"].values() if p))
    print("| mode | tokens on looping prompts | saved | saved on loops that end | looping "
          "prompts that ended | still looping at the end | clean prompts acted on | clean "
          "prompts differing, no action | wall s |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for mode, m in summary["modes"].items():
        print(f"| {mode} | {m['loop_prompt_tokens']} | {m['tokens_saved']:.0%} | "
              f"{m['ended_loop_tokens_saved']:.0%} | "
              f"{m['ended_without_length']}/{summary['looping']} | {m['still_ends_in_loop']} | "
              f"{m['clean_prompts_acted_on']} | {m['clean_prompts_differing']} | "
              f"{times[mode]:.0f} |")


# -- synthetic counter cycles ---------------------------------------------------------------
LANGS = ["Dutch", "Polish", "Greek", "Czech", "Danish", "Irish", "Welsh", "Basque", "Catalan",
         "Breton", "Maltese", "Latvian", "Slovak", "Croatian", "Serbian", "Bosnian"]
GREETINGS = ["hallo", "cześć", "geia", "ahoj", "hej", "dia duit", "helo", "kaixo"]


def _item(i: int) -> str:
    return f"**{LANGS[i % 16]}**: \"{GREETINGS[i // 16 % 8]}\", or \"{GREETINGS[i % 8]}\""


# list styles: item i of the cycle under counter n, as its lines
STYLES: dict[str, Callable[[int, int], list[str]]] = {
    "numbered": lambda n, i: [f"{n}. {_item(i)}"],
    "inline": lambda n, i: [f"Greeting {n} - {_item(i)}"],
    "table": lambda n, i: [f"| {n} | {_item(i)} |"],
    "two-line": lambda n, i: [f"{n}. **{LANGS[i % 16]}**",
                              f"   Say \"{GREETINGS[i % 8]}\" or \"{GREETINGS[i // 8 % 8]}\"."],
}


def cycle_lines(period: int, copies: int, item: Callable[[int, int], list[str]]) -> list[str]:
    """`period` lines that repeat `copies` times, the counter (from 1) running on: item(n, i) is
    item i of the cycle under counter n, in lines (every item as many)."""
    per_cycle = period // len(item(1, 0))
    lines = []
    for c in range(copies):
        for i in range(per_cycle):
            lines += item(1 + c * per_cycle + i, i)
    return lines


def synthetic_cycle(period: int, style: str, copies: int) -> tuple[str, list[str]]:
    """(intro, lines): `period` lines of a list in `style` that repeat `copies` times."""
    return "Here is the list you asked for:\n\n", cycle_lines(period, copies, STYLES[style])


def synthetic_progressions() -> dict[str, str]:
    """Lists that progress: the detector must stay quiet on each."""
    primes = [n for n in range(2, 2000) if all(n % d for d in range(2, int(n ** 0.5) + 1))]
    states = ["Alabama", "Alaska", "Arizona", "Arkansas", "California", "Colorado", "Delaware",
              "Florida", "Georgia", "Hawaii", "Idaho", "Illinois", "Indiana", "Iowa", "Kansas",
              "Kentucky", "Louisiana", "Maine", "Maryland", "Michigan", "Minnesota", "Missouri"]
    return {
        "counting": "\n".join(str(n) for n in range(1, 400)),
        "counting in words": "\n".join(f"Number {n} comes after number {n - 1}."
                                       for n in range(1, 200)),
        "primes": ", ".join(map(str, primes)),
        "multiplication table": "\n".join(f"{a} x {b} = {a * b}" for a in range(2, 13)
                                          for b in range(1, 13)),
        "squares": "\n".join(f"{n}. The square of {n} is {n * n}." for n in range(1, 150)),
        "countries": "\n".join(f"{i}. **{s}**: {s[:4]}ville" for i, s in
                               enumerate(states * 1, 1)),
        "weekly plan (2-line template)": "\n".join(
            f"Week {n}:\n- Read chapter {n} and take notes." for n in range(1, 80)),
        "schedule (3-line template)": "\n".join(
            f"Day {n}\nMorning: review lesson {n}\nEvening: exercises {n}" for n in range(1, 60)),
        "binary": "\n".join(f"{n} in binary is {n:b}" for n in range(1, 200)),
        "table rows": "\n".join(f"| {n} | item {n} | {n * 3} | {n % 7} |" for n in range(1, 150)),
    }


def token_deltas(tokenizer, ids: list[int]) -> list[str]:
    """The text each token adds, as the engine's detokenizer gives it."""
    from qwq.tokenizer import IncrementalDetokenizer
    detok = IncrementalDetokenizer(tokenizer)
    return [detok.add(t) for t in ids]


def first_detection(tokenizer, text: str) -> int | None:
    from qwq.reasoning.loops import LoopDetector
    det = LoopDetector()
    ids = tokenizer.encode(text)
    for i, (t, delta) in enumerate(zip(ids, token_deltas(tokenizer, ids))):
        if det.push(t, delta, i + 1):
            return i + 1
    return None


def run_synthetic(tokenizer, periods: range = range(2, 65)) -> dict:
    """Each period in each style: caught, and after how many copies of the cycle."""
    caught, total, copies_needed = 0, 0, []
    for period in periods:
        for style in STYLES:
            if style == "two-line" and (period % 2 or period < 4):
                continue  # one two-line item a cycle is a template counting up: not a loop
            total += 1
            intro, lines = synthetic_cycle(period, style, copies=4)
            text = intro + "\n".join(lines) + "\n"
            at = first_detection(tokenizer, text)
            if at is None:
                continue
            caught += 1
            cycle = len(tokenizer.encode("\n".join(lines[:len(lines) // 4]) + "\n"))
            copies_needed.append((at - len(tokenizer.encode(intro))) / cycle)
    quiet = {name: first_detection(tokenizer, text) is None
             for name, text in synthetic_progressions().items()}
    return {"cycles": total, "caught": caught, "copies_median": statistics.median(copies_needed),
            "copies_max": max(copies_needed), "progressions": len(quiet),
            "false_alarms": [k for k, ok in quiet.items() if not ok]}


# -- the detector's cost ----------------------------------------------------------------------
def detector_cost(llm, rows: list[dict]) -> dict:
    """Seconds per token of the detector over real answers, against a decode step at batch 1."""
    from qwq import SamplingParams
    from qwq.reasoning.loops import LoopDetector
    tok = llm.tokenizer
    tokens, spent = 0, 0.0
    for r in rows:
        det, deltas = LoopDetector(), token_deltas(tok, r["token_ids"])
        start = time.perf_counter()
        for i, (t, d) in enumerate(zip(r["token_ids"], deltas)):
            det.push(t, d, i + 1)
        spent += time.perf_counter() - start
        tokens += len(deltas)
    params = SamplingParams(temperature=0, max_tokens=64, ignore_eos=True, loop_control="off")
    ids = llm.encode_chat([{"role": "user", "content": "Tell me about the sea."}])
    llm.generate([ids], params)  # warm
    start = time.perf_counter()
    llm.generate([ids], params)
    step = (time.perf_counter() - start) / 64
    return {"tokens": tokens, "detector_us_per_token": 1e6 * spent / max(1, tokens),
            "decode_step_ms": 1e3 * step, "share_of_step": spent / max(1, tokens) / step}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sets", default="main,counter,synthetic")
    ap.add_argument("--modes", default="off,stop,nudge,penalize")
    ap.add_argument("--json", default=None, help="write every generation and the summary here")
    args = ap.parse_args()
    from qwq import LLM
    from qwq.reasoning.controls import ControlFactory
    llm = LLM()
    llm.engine.control_factory = RecordingFactory(ControlFactory.for_tokenizer(llm.tokenizer))
    modes = args.modes.split(",")
    if "off" not in modes:
        modes.insert(0, "off")
    report: dict = {}
    rows_seen: list[dict] = []
    for name in args.sets.split(","):
        if name == "synthetic":
            report[name] = run_synthetic(llm.tokenizer)
            print(f"\n# synthetic counter cycles ({today()}, {machine()}): {report[name]}")
            continue
        prompts, max_tokens = SETS[name]
        results, times = {}, {}
        for mode in modes:
            results[mode], times[mode] = run_mode(llm, prompts, mode, max_tokens)
        summary = summarize(results)
        print_report(name, summary, times, max_tokens, llm.engine.config.quantize)
        report[name] = {"summary": summary, "times": times, "results": results}
        rows_seen += results["off"]
    if rows_seen:
        report["cost"] = detector_cost(llm, rows_seen)
        print(f"\n# detector cost: {report['cost']}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, ensure_ascii=False, indent=1)


if __name__ == "__main__":
    main()
