"""Maths problems with reference answers (JSONL), graded with math-verify; self-consistency by
majority vote over the extracted \\boxed answers."""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path
from typing import Any

from qwq.reasoning.parser import extract_boxed, parse

INSTRUCTION = ("{problem}\n\nPlease reason step by step, and put your final answer within "
               "\\boxed{{}}.")
_PROBLEM_KEYS = ("problem", "question", "prompt")
_ANSWER_KEYS = ("answer", "solution", "reference")


def load_jsonl(path: str | Path) -> list[dict[str, str]]:
    """[{"problem", "answer"}] from lines with problem/question/prompt and answer/solution."""
    items = []
    for n, line in enumerate(Path(path).read_text().splitlines(), 1):
        if not line.strip():
            continue
        row = json.loads(line)
        problem = next((row[k] for k in _PROBLEM_KEYS if k in row), None)
        answer = next((row[k] for k in _ANSWER_KEYS if k in row), None)
        if problem is None or answer is None:
            raise ValueError(f"{path}:{n}: needs a problem and an answer field")
        items.append({"problem": str(problem), "answer": str(answer)})
    return items


def messages(item: dict[str, str]) -> list[dict[str, str]]:
    return [{"role": "user", "content": INSTRUCTION.format(problem=item["problem"])}]


def extract_answer(text: str, style: str | None = None) -> str | None:
    """The final \\boxed{} answer (from the answer part when the text has reasoning), split
    by the model's reasoning style as the server splits it (None: read off the text)."""
    parsed = parse(text, style)
    return parsed.final_answer or extract_boxed(text)


def normalize(answer: str) -> str:
    """A voting key: spacing, \\left/\\right, \\text{}, $ and a trailing period removed."""
    a = re.sub(r"\\(?:left|right|displaystyle|!|,|;)", "", answer)
    a = re.sub(r"\\text\{([^{}]*)\}", r"\1", a)
    return re.sub(r"\s+", "", a).strip("$.")


def majority(answers: list[str | None]) -> str | None:
    keyed = [(normalize(a), a) for a in answers if a]
    if not keyed:
        return None
    best, _ = Counter(k for k, _ in keyed).most_common(1)[0]
    return next(a for k, a in keyed if k == best)


def is_correct(predicted: str | None, reference: str) -> bool:
    """math-verify equivalence of the predicted and reference answers (both as boxed LaTeX)."""
    if predicted is None:
        return False
    try:
        from math_verify import parse as mv_parse
        from math_verify import verify
    except ImportError as e:
        raise ImportError("qwq eval math needs math-verify: pip install 'qwq[dev]'") from e
    gold = mv_parse(_boxed(reference))
    guess = mv_parse(_boxed(predicted))
    return bool(gold and guess and verify(gold, guess)) or normalize(predicted) == normalize(
        extract_boxed(reference) or reference)


def _boxed(answer: str) -> str:
    return answer if "\\boxed" in answer else f"$\\boxed{{{answer}}}$"


def grade(items: list[dict[str, str]], samples: list[list[Any]],
          style: str | None = None) -> list[dict[str, Any]]:
    """Per item: the voted answer, whether it is right, and its samples' answers."""
    rows = []
    for item, group in zip(items, samples):
        answers = [extract_answer(s.text, style) for s in group]
        voted = majority(answers)
        rows.append({"answer": voted, "reference": item["answer"], "answers": answers,
                     "correct": is_correct(voted, item["answer"])})
    return rows
