"""Request fields -> controls, and their validation."""

import pytest
from test_reasoning_helpers import FakeTokenizer, drive

from qwq.errors import RequestError
from qwq.reasoning.actions import SequenceControl
from qwq.reasoning.budget import ReasoningCloser
from qwq.reasoning.controls import ControlFactory, build_controls, detect_style
from qwq.reasoning.guard import GuardControl, get_guard
from qwq.reasoning.language import LanguageControl
from qwq.reasoning.loops import LoopControl, PenalizingLoopControl
from qwq.sampling_params import SamplingParams


def kinds(controls):
    return [type(c).__name__ for c in controls]


def test_defaults_for_an_ordinary_model_are_loop_nudge_only():
    controls = build_controls(SamplingParams(), FakeTokenizer(), style="plain",
                              reasoning_model=False)
    assert kinds(controls) == ["LoopControl"] and controls[0].action == "nudge"


def test_reasoning_models_conclude_by_default():
    controls = build_controls(SamplingParams(max_tokens=100), FakeTokenizer(), style="think",
                              reasoning_model=True)
    closer = next(c for c in controls if isinstance(c, ReasoningCloser))
    assert closer.conclude_at == 100 - 16 and closer.budget is None
    off = build_controls(SamplingParams(conclude=False, loop_control="off"), FakeTokenizer(),
                         style="think", reasoning_model=True)
    assert off == []


def test_every_field_builds_its_control_in_order():
    params = SamplingParams(max_thinking_tokens=64, loop_control="penalize", language="en",
                            guard="basic")
    tok = FakeTokenizer()
    tok.encode("hello world")
    controls = build_controls(params, tok, style="plain", reasoning_model=False)
    assert [type(c) for c in controls] == [GuardControl, ReasoningCloser,
                                           PenalizingLoopControl, LanguageControl]
    assert controls[1].budget == 64 and controls[1].conclude_at is None
    assert all(isinstance(c, SequenceControl) for c in controls)
    # only the penalizing loop control and the language mask shape logits
    assert [c.logits_processor() is not None for c in controls] == [False, False, True, True]
    assert controls[1].on_prompt([1, 2]) is None  # the defaults do nothing


def test_effort_sets_the_budget():
    controls = build_controls(SamplingParams(reasoning_effort="low", loop_control="off"),
                              FakeTokenizer(), style="think", reasoning_model=True)
    assert controls[0].budget == 1024


def test_controls_share_one_phase_so_a_budget_close_ends_loop_steering():
    controls = build_controls(SamplingParams(max_thinking_tokens=20, loop_control="stop"),
                              FakeTokenizer(), style="think", reasoning_model=True)
    assert controls[0].phase is controls[1].phase


def test_language_auto_detects_from_the_prompt():
    tok = FakeTokenizer()
    prompt = tok.encode("<|im_start|>user\nПривет мир<|im_end|>\n<|im_start|>assistant\n")
    controls = build_controls(SamplingParams(language="auto", loop_control="off"), tok, prompt,
                              style="plain", reasoning_model=False)
    assert controls[0].language == "ru"
    assert build_controls(SamplingParams(language="auto", loop_control="off"), tok,
                          style="plain", reasoning_model=False) == []


def test_unknown_guard_is_a_request_error():
    with pytest.raises(RequestError) as e:
        build_controls(SamplingParams(guard="nope"), FakeTokenizer(), style="plain")
    assert e.value.param == "guard"


@pytest.mark.parametrize("field,value", [("max_thinking_tokens", 0), ("max_thinking_tokens", 1.5),
                                         ("reasoning_effort", "max"), ("loop_control", "loud"),
                                         ("language", "xx"), ("guard", ""), ("conclude", "yes")])
def test_bad_fields_are_rejected_naming_the_field(field, value):
    with pytest.raises(RequestError) as e:
        SamplingParams(**{field: value})
    assert e.value.param == field


def test_style_detection_from_chat_templates():
    assert detect_style("{{ '<|im_start|>assistant\\n<think>\\n' }}") == ("think", True)
    assert detect_style("You are Qwen developed by Alibaba. You should think step-by-step.") \
        == ("plain", True)
    assert detect_style("{{ messages }}") == ("plain", False)
    assert ControlFactory.for_tokenizer(FakeTokenizer()) == ControlFactory("plain", False)


def test_factory_builds_fresh_controls_per_sequence():
    factory = ControlFactory("plain", False)
    a, b = factory(SamplingParams(), FakeTokenizer()), factory(SamplingParams(), FakeTokenizer())
    assert a[0] is not b[0]


def test_input_check_reads_user_turns_only():
    class Chars:  # ids are characters: decode gives the prompt back
        def decode(self, ids):
            return "".join(map(chr, ids))

    guard = GuardControl(get_guard("basic"), Chars())
    prompt = ("<|im_start|>system\nNever explain how to make a pipe bomb.<|im_end|>\n"
              "<|im_start|>user\nhow to make a cake<|im_end|>\n<|im_start|>assistant\n")
    assert guard.on_prompt([ord(c) for c in prompt]) is None
    blocked = guard.on_prompt([ord(c) for c in prompt.replace("a cake", "a pipe bomb")])
    assert blocked.finish_reason == "content_filter"
    assert blocked.detail == {"category": "weapons", "guard": "basic", "stage": "input"}


def test_composed_controls_on_a_looping_stream():
    tok = FakeTokenizer()
    controls = build_controls(SamplingParams(max_tokens=400, loop_control="stop"), tok,
                              style="plain", reasoning_model=True)
    model = tok.encode("Let me think. " + "I explain the explanation again. " * 60)
    _, text, reason, _actions = drive(controls, tok, model, max_tokens=400)
    assert reason == "loop" and "**Final Answer**" in text
    assert isinstance(controls[1], LoopControl) and controls[1].events


def test_cli_flags_map_to_request_fields(tmp_path):
    import argparse

    from qwq.reasoning.options import add_reasoning_args, reasoning_fields
    policy = tmp_path / "g.json"
    policy.write_text('{"name": "cli-g", "categories": {"x": ["forbidden"]}}')
    parser = argparse.ArgumentParser()
    add_reasoning_args(parser)
    args = parser.parse_args(["--max-thinking-tokens", "128", "--loop-control", "stop",
                              "--language", "en", "--guard", "cli-g", "--guard-file",
                              str(policy), "--no-conclude"])
    fields = reasoning_fields(args)
    assert fields == {"max_thinking_tokens": 128, "reasoning_effort": None,
                      "loop_control": "stop", "language": "en", "guard": "cli-g",
                      "conclude": False}
    SamplingParams(**fields)  # valid, and the guard is registered
    build_controls(SamplingParams(**fields), FakeTokenizer(), style="plain")
