"""Language mixing on the demo model at greedy, before and after language="en".

English questions about East Asian and Slavic topics, where Qwen models tend to switch script.
Reports the mixing rate (share of words / CJK characters outside the expected scripts, code and
quoted text left out) and how many answers hold any CJK character, without and with the mask.

    python bench/language.py [--max-tokens 160] [--json out.json]
"""

from __future__ import annotations

import json
import statistics
import time

from common import controlled_demo, machine, script_args, today

PROMPTS = [
    "What are the twelve Chinese zodiac animals? Give their Chinese names too.",
    "How do you write and say 'thank you' in Mandarin?",
    "Tell me about the traditions of the Chinese Spring Festival.",
    "Name three famous Tang dynasty poets and quote a line from each.",
    "What does the Chinese idiom about drawing a snake and adding feet mean?",
    "Explain the meaning of the Japanese word for 'wabi-sabi'.",
    "List the Japanese hiragana vowels and how to pronounce them.",
    "How do Koreans greet each other? Include the Korean words.",
    "What is the Russian word for 'friend' and how is it declined?",
    "Write a short haiku about autumn, in the traditional style.",
    "Explain the five elements (wu xing) of Chinese philosophy with their characters.",
    "What are the most common Chinese surnames?",
    "Teach me to count from one to ten in Chinese.",
    "What is the difference between simplified and traditional Chinese characters?",
    "Translate 'good morning' into Chinese, Japanese and Korean.",
    "What are the main dishes of Sichuan cuisine?",
    "Explain how the Python function sorted() works, with an example.",
    "What is the capital of France and what is it famous for?",
]


def run(llm, language: str | None, max_tokens: int) -> tuple[list[str], float]:
    from qwq import SamplingParams
    params = SamplingParams(temperature=0, max_tokens=max_tokens, language=language)
    start = time.perf_counter()
    outs = llm.chat([[{"role": "user", "content": p}] for p in PROMPTS], params)
    return [o.outputs[0].text for o in outs], time.perf_counter() - start


def has_cjk(text: str) -> bool:
    from qwq.reasoning.language import HAN, HANGUL, KANA, char_script
    return any(char_script(ch) & (HAN | KANA | HANGUL) for ch in text)


def main() -> None:
    args = script_args(__doc__, 160)
    from qwq.reasoning.language import mixing_rate, strip_code
    llm = controlled_demo()
    report = {}
    for setting in (None, "en"):
        texts, elapsed = run(llm, setting, args.max_tokens)
        rates = [mixing_rate(t, "en") for t in texts]
        report[str(setting)] = {
            "mean_mixing_rate": statistics.mean(rates),
            "answers_with_cjk": sum(has_cjk(strip_code(t)) for t in texts),
            "seconds": elapsed, "rates": rates, "texts": texts}
    print(f"# language mixing, demo model, greedy, max_tokens={args.max_tokens}, "
          f"{len(PROMPTS)} English prompts ({today()}, {machine()})")
    print("| language | mean mixing rate | answers with CJK (outside code) | wall s |")
    print("| --- | --- | --- | --- |")
    for setting, r in report.items():
        print(f"| {setting} | {r['mean_mixing_rate']:.2%} | {r['answers_with_cjk']}/"
              f"{len(PROMPTS)} | {r['seconds']:.0f} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"prompts": PROMPTS, **report}, f, ensure_ascii=False, indent=1)


if __name__ == "__main__":
    main()
