"""Loop detection on the demo model at greedy: detection rate, false positives, tokens saved.

Every prompt runs once per loop_control mode (off, stop, nudge, penalize), all prompts of a mode
batched through the engine. Ground truth comes from the "off" run by a retrospective check that
does not use the online detector: the generation hit max_tokens and most of the last 30%
of its text (line counters and bullets left out) repeats text written before it.

    python bench/loops.py [--max-tokens 320] [--modes off,stop,nudge,penalize] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import time

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
PROMPTS = ([f"Explain the explanation of the explanation of {x}." for x in EXPLAIN]
           + [f"List every {x}." for x in LIST_EVERY] + OTHER + STRUCTURED)

_COUNTER = re.compile(r"^[ \t]*(?:\d+[.),:]?|[-*•>#|]+)[ \t]*", re.MULTILINE)


def ends_in_loop(text: str, finish: str, tail: float = 0.3, cover: float = 0.75,
                 width: int = 32) -> bool:
    """Hit max_tokens, and nearly every `width`-character window of the tail (line counters and
    bullets left out) already appeared earlier in the text."""
    if finish != "length":
        return False
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


class RecordingFactory:
    """The engine's control factory, keeping each sequence's controls for inspection."""

    def __init__(self, inner):
        self.inner, self.made = inner, []

    def __call__(self, params, tokenizer, prompt_ids=None):
        controls = self.inner(params, tokenizer, prompt_ids)
        self.made.append(controls)
        return controls


def run_mode(llm, mode: str, max_tokens: int) -> tuple[list[dict], float]:
    from qwq import SamplingParams
    from qwq.reasoning.loops import LoopControl
    factory = llm.engine.control_factory
    factory.made.clear()
    params = SamplingParams(temperature=0, max_tokens=max_tokens, loop_control=mode,
                            conclude=False)
    start = time.perf_counter()
    outs = llm.chat([[{"role": "user", "content": p}] for p in PROMPTS], params)
    elapsed = time.perf_counter() - start
    rows = []
    for prompt, out, controls in zip(PROMPTS, outs, factory.made):
        c = out.outputs[0]
        loop = next((x for x in controls if isinstance(x, LoopControl)), None)
        event = loop.events[0] if loop and loop.events else None
        rows.append({"prompt": prompt, "tokens": len(c.token_ids), "finish": c.finish_reason,
                     "detected_at": event.end if event else None,
                     "loop_start": event.start if event else None, "text": c.text})
    return rows, elapsed


def summarize(results: dict[str, list[dict]]) -> dict:
    off = results["off"]
    truth = [ends_in_loop(r["text"], r["finish"]) for r in off]
    probe = results.get("stop") or results.get("nudge") or results.get("penalize")
    hit = [r["detected_at"] is not None for r in probe]
    loops = [i for i, t in enumerate(truth) if t]
    clean = [i for i, t in enumerate(truth) if not t]
    summary = {"prompts": len(off), "looping": len(loops),
               "detection_rate": sum(hit[i] for i in loops) / max(1, len(loops)),
               "false_positive_rate": sum(hit[i] for i in clean) / max(1, len(clean)),
               "false_positives": [off[i]["prompt"] for i in clean if hit[i]],
               "detect_latency_tokens": statistics.median(
                   [probe[i]["detected_at"] - probe[i]["loop_start"] for i in loops if hit[i]]
                   or [0]),
               "detected_at_tokens": statistics.median(
                   [probe[i]["detected_at"] for i in loops if hit[i]] or [0]),
               "modes": {}}
    base = sum(off[i]["tokens"] for i in loops)
    for mode, rows in results.items():
        used = sum(rows[i]["tokens"] for i in loops)
        summary["modes"][mode] = {
            "loop_prompt_tokens": used,
            "tokens_saved": (base - used) / max(1, base),
            "ended_without_length": sum(rows[i]["finish"] != "length" for i in loops),
            "still_ends_in_loop": sum(ends_in_loop(rows[i]["text"], rows[i]["finish"])
                                      for i in loops),
            "clean_prompts_acted_on": sum(rows[i]["detected_at"] is not None for i in clean),
            # greedy output that moved with no control acting: batch composition differs
            "clean_prompts_differing": sum(rows[i]["text"] != off[i]["text"]
                                           and rows[i]["detected_at"] is None for i in clean)}
    return summary


def print_report(summary: dict, times: dict[str, float], max_tokens: int, quant: str) -> None:
    print(f"# loop control on the demo model (quantize={quant}), greedy, "
          f"max_tokens={max_tokens} ({today()}, {machine()})")
    print(f"{summary['prompts']} prompts, {summary['looping']} loop at greedy (off run)")
    print(f"detection rate {summary['detection_rate']:.0%}, false-positive rate "
          f"{summary['false_positive_rate']:.0%}, detected a median "
          f"{summary['detect_latency_tokens']} tokens after the loop began "
          f"(at token {summary['detected_at_tokens']})")
    print("| mode | tokens on looping prompts | saved | looping prompts that ended | "
          "still looping at the end | clean prompts acted on | clean prompts differing, "
          "no action | wall s |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for mode, m in summary["modes"].items():
        print(f"| {mode} | {m['loop_prompt_tokens']} | {m['tokens_saved']:.0%} | "
              f"{m['ended_without_length']}/{summary['looping']} | {m['still_ends_in_loop']} | "
              f"{m['clean_prompts_acted_on']} | {m['clean_prompts_differing']} | "
              f"{times[mode]:.0f} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--max-tokens", type=int, default=320)
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
    results, times = {}, {}
    for mode in modes:
        results[mode], times[mode] = run_mode(llm, mode, args.max_tokens)
    summary = summarize(results)
    print_report(summary, times, args.max_tokens, llm.engine.config.quantize)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"summary": summary, "times": times, "results": results}, f,
                      ensure_ascii=False, indent=1)


if __name__ == "__main__":
    main()
