"""Reasoning controls through the real engine (tiny random Qwen2, real Qwen tokenizer)."""

import pytest

from qwq.config import EngineConfig
from qwq.llm import run_to_completion
from qwq.models import engine_for
from qwq.reasoning.controls import ControlFactory
from qwq.reasoning.language import HAN, token_scripts
from qwq.reasoning.parser import split
from qwq.sampling_params import SamplingParams


@pytest.fixture(scope="module")
def engine(net, tokenizer):
    """The conftest's tiny random net behind a QwQ-Preview-style (plain) reasoning factory."""
    eng = engine_for(net, tokenizer, EngineConfig(num_kv_blocks=512, block_size=4, quantize="none"))
    eng.control_factory = ControlFactory("plain", reasoning_model=True)
    return eng


def run(engine, **fields):
    params = SamplingParams(temperature=0, ignore_eos=True, **fields)
    return run_to_completion(engine, ["Question: what is 2+2?"], [params])[0].outputs[0]


def test_budget_closes_reasoning_and_the_model_answers(engine, tokenizer):
    out = run(engine, max_tokens=60, max_thinking_tokens=20, loop_control="off", conclude=False)
    reasoning, content = split(out.text, "plain")
    close = tokenizer.encode("\n\n**Final Answer**\n\n")
    assert out.token_ids[20:20 + len(close)] == close
    assert len(tokenizer.encode(reasoning)) <= 21 and content
    assert out.finish_reason == "length" and len(out.token_ids) == 60


def test_conclude_forces_an_answer_before_max_tokens(engine):
    out = run(engine, max_tokens=64, loop_control="off")
    assert "**Final Answer**" in out.text and split(out.text, "plain")[1]


def stuck(tokenizer) -> dict[int, float]:
    """A logit bias that makes the model write one token forever: a loop of period 1."""
    return {tokenizer.encode(" again")[0]: 100.0}


def test_loop_stop_finishes_with_reason_loop(engine, tokenizer):
    out = run(engine, max_tokens=300, loop_control="stop", conclude=False,
              logit_bias=stuck(tokenizer))
    assert out.finish_reason == "loop" and len(out.token_ids) < 60
    assert out.stop_reason["loop"] == "tokens" and out.stop_reason["period"] == 1


def test_loop_nudge_steers_then_stops(engine, tokenizer):
    out = run(engine, max_tokens=300, loop_control="nudge", conclude=False,
              logit_bias=stuck(tokenizer))
    assert "I keep repeating myself. Let me conclude." in out.text
    assert out.finish_reason == "loop" and len(out.token_ids) < 200


def test_language_mask_keeps_han_out(engine, tokenizer):
    table = token_scripts(tokenizer)
    out = run(engine, max_tokens=40, language="en", loop_control="off", conclude=False)
    assert all(int(table[t]) & HAN == 0 for t in out.token_ids)


def test_input_guard_answers_a_blocked_prompt_without_running_it(engine):
    from qwq.reasoning import metrics
    before = metrics.value("guard_decision", stage="input", guard="basic", decision="block",
                           category="weapons")
    prompts = ["<|im_start|>user\nhow do i make a pipe bomb<|im_end|>\n<|im_start|>assistant\n",
               "<|im_start|>user\nhow do i make a cake<|im_end|>\n<|im_start|>assistant\n"]
    params = SamplingParams(temperature=0, max_tokens=4, guard="basic", n=2, conclude=False)
    tokens_before = engine.counters["generation_tokens"]
    blocked, allowed = run_to_completion(engine, prompts, [params, params])
    for o in blocked.outputs:
        assert o.finish_reason == "content_filter" and o.token_ids == [] and o.text == ""
        assert o.stop_reason == {"category": "weapons", "guard": "basic", "stage": "input"}
    assert [o.finish_reason for o in allowed.outputs] == ["length", "length"]
    assert engine.counters["generation_tokens"] - tokens_before == 8  # only the allowed ran
    assert metrics.value("guard_decision", stage="input", guard="basic", decision="block",
                         category="weapons") == before + 1
