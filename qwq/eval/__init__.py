"""Evaluation harness: HumanEval (sandboxed execution) and maths (math-verify), with
self-consistency voting. The command line is `qwq eval` (qwq.eval.cli)."""
