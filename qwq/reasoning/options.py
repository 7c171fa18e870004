"""The reasoning request fields as command-line flags, the same names on every surface."""

from __future__ import annotations

import argparse
from typing import Any

from qwq.reasoning.budget import EFFORT_BUDGETS
from qwq.reasoning.guard import load_guards
from qwq.reasoning.loops import LOOP_ACTIONS

FIELDS = ("max_thinking_tokens", "reasoning_effort", "loop_control", "language", "guard",
          "conclude")


def add_reasoning_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("reasoning controls")
    g.add_argument("--max-thinking-tokens", type=int, default=None,
                   help="cap on reasoning tokens; then the reasoning is closed and the model "
                        "answers")
    g.add_argument("--reasoning-effort", choices=list(EFFORT_BUDGETS), default=None,
                   help="a thinking budget: " + ", ".join(f"{k}={v}"
                                                          for k, v in EFFORT_BUDGETS.items()))
    g.add_argument("--loop-control", choices=LOOP_ACTIONS, default="nudge",
                   help="what to do when the output loops (default: nudge)")
    g.add_argument("--language", default=None,
                   help="keep the answer in this language: auto (the user's) or a code (en, zh)")
    g.add_argument("--guard", default=None, help="name of a guard policy (basic, or one from "
                                                 "--guard-file)")
    g.add_argument("--guard-file", default=None,
                   help="JSON or YAML file of guard policies to register")
    g.add_argument("--conclude", action=argparse.BooleanOptionalAction, default=None,
                   help="force a final answer before max tokens run out (default: on for "
                        "reasoning models)")


def reasoning_fields(args: argparse.Namespace) -> dict[str, Any]:
    """SamplingParams keyword arguments from parsed flags (and registers --guard-file)."""
    if getattr(args, "guard_file", None):
        load_guards(args.guard_file)
    return {name: getattr(args, name) for name in FIELDS if hasattr(args, name)}
