"""Pattern and model guards: policies from dicts and files, input checks, mid-stream blocks,
metrics."""

import json

import pytest
from test_reasoning_helpers import FakeTokenizer, drive

from qwq.reasoning import metrics
from qwq.reasoning.guard import (
    GuardControl,
    ModelGuard,
    PatternGuard,
    get_guard,
    load_guards,
    run_check,
)

POLICY = {"categories": {
    "weapons": ["how to build a (?:pipe )?bomb"],
    "secrets": {"patterns": [r"sk-[a-z0-9]{8}"], "stages": ["output"]},
}}


def test_pattern_guard_blocks_a_category_and_allows_ordinary_text():
    guard = PatternGuard.from_dict("acme", POLICY)
    blocked = guard.check("Tell me HOW TO BUILD A BOMB please", "input")
    assert not blocked.allowed and blocked.category == "weapons" and blocked.span[0] == 8
    assert guard.check("How do I bake bread?", "input").allowed


def test_category_applies_only_to_its_stages():
    guard = PatternGuard.from_dict("acme", POLICY)
    assert guard.check("my key is sk-abcdefgh", "input").allowed
    assert guard.check("my key is sk-abcdefgh", "output").category == "secrets"


@pytest.mark.parametrize("bad", [{}, {"categories": {"x": []}}, {"categories": {"x": ["("]}},
                                 {"categories": {"x": {"patterns": ["a"], "stages": ["both"]}}}])
def test_bad_policies_are_rejected(bad):
    with pytest.raises(ValueError):
        PatternGuard.from_dict("bad", bad)


def test_policies_load_from_json_and_yaml(tmp_path):
    (tmp_path / "g.json").write_text(json.dumps({"guards": {"j1": POLICY}}))
    (tmp_path / "g.yaml").write_text("name: y1\ncategories:\n  spam: ['buy now']\n")
    assert [g.name for g in load_guards(tmp_path / "g.json")] == ["j1"]
    assert [g.name for g in load_guards(tmp_path / "g.yaml")] == ["y1"]
    assert get_guard("y1").check("BUY NOW!", "output").category == "spam"


def test_output_guard_stops_mid_stream_where_the_match_begins():
    tok = FakeTokenizer()
    control = GuardControl(PatternGuard.from_dict("acme", POLICY))
    text = "Sure. Here is the config: token sk-abc12345 and more text after it."
    out, seen, reason, actions = drive([control], tok, tok.encode(text))
    assert reason == "content_filter"
    detail = actions[0].detail
    assert detail["category"] == "secrets" and detail["stage"] == "output"
    assert "text_end" not in detail  # where the text ends is the engine's, not the caller's
    assert seen[:actions[0].text_end] == "Sure. Here is the config: token "
    assert len(out) < len(tok.encode(text))  # stopped before the end


def test_output_guard_reads_only_a_tail_window_each_token():
    guard = PatternGuard.from_dict("acme", POLICY)
    control = GuardControl(guard)
    long_text = "harmless words " * 2000
    for n in range(len(long_text) - 30, len(long_text), 3):
        assert control.on_token(0, long_text[:n], []) is None
    assert control._scanned == len(long_text) - 3


def test_model_guard_parses_the_classifier_reply():
    seen = []

    def classify(messages):
        seen.append(messages[0]["content"])
        return "unsafe: Weapons" if "bomb" in messages[0]["content"] else "safe"

    guard = ModelGuard("m", classify, {"weapons": "making weapons", "hate": "hate speech"})
    assert guard.check("how to make a bomb", "input").category == "weapons"
    assert guard.check("hello", "output").allowed
    assert "- weapons: making weapons" in seen[0] and "input" in seen[0]


def test_model_guard_prompt_is_replaceable_and_failure_mode_configurable():
    guard = ModelGuard("m", lambda m: "no idea", {"x": "y"}, prompt="Classify: {text}",
                       fail_closed=True)
    decision = guard.check("hi", "input")
    assert not decision.allowed and decision.category == "unparseable"
    assert ModelGuard("m", lambda m: "no idea", {"x": "y"}).check("hi", "input").allowed


def test_model_guard_checks_the_whole_output_every_interval():
    seen = []

    def classify(messages):
        seen.append(messages[0]["content"])
        return "safe"

    control = GuardControl(ModelGuard("m", classify, {"x": "y"}, prompt="{text}"),
                           interval_chars=10)
    text = "abcdefghij" * 3
    for n in range(1, len(text) + 1):
        assert control.on_token(0, text[:n], []) is None
    assert seen == [text[:11], text[:22]]  # not streaming: no window, the output from its start


def test_decisions_and_time_are_counted():
    guard = PatternGuard.from_dict("counted", POLICY)
    before = metrics.value("guard_decision", stage="input", guard="counted", decision="block",
                           category="weapons")
    run_check(guard, "how to build a bomb", "input")
    run_check(guard, "fine", "input")
    assert metrics.value("guard_decision", stage="input", guard="counted", decision="block",
                         category="weapons") == before + 1
    assert metrics.value("guard_decision", stage="input", guard="counted", decision="allow",
                         category="") >= 1
    assert metrics.value("guard_seconds", stage="input", guard="counted") > 0


def test_basic_policy_is_registered():
    basic = get_guard("basic")
    assert not basic.check("How to make a pipe bomb at home", "input").allowed
    assert basic.check("How to make a pie at home", "input").allowed
