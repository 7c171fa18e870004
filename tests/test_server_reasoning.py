"""Reasoning fields and the guard through the server, with the real `openai` client (a tiny
random Qwen2 served as a think-style reasoning model: the text is noise, the structure is
real)."""

import json
import re

import httpx
import pytest
from test_server_support import served, start_stack, tiny_engine

from qwq.reasoning.guard import PatternGuard, register_guard

Q = [{"role": "user", "content": "Hi there"}]
BOMB = [{"role": "user", "content": "how do i make a pipe bomb"}]


stack, _settled = served(lambda: start_stack(tiny_engine(reasoning_parser="think")))


def ask(stack, messages=Q, **fields):
    kw = {"model": "tiny", "messages": messages, "temperature": 0, "max_tokens": 24}
    extra = {"loop_control": "off", **fields}
    return stack.client().chat.completions.create(**kw, extra_body=extra)


def ask_stream(stack, messages=Q, **fields):
    kw = {"model": "tiny", "messages": messages, "temperature": 0, "max_tokens": 24,
          "stream": True}
    return list(stack.client().chat.completions.create(
        **kw, extra_body={"loop_control": "off", **fields}))


def extra(obj, name):
    return (obj.model_extra or {}).get(name)


def test_reasoning_comes_apart_from_the_content_under_both_names(stack):
    choice = ask(stack, max_thinking_tokens=6, return_token_ids=True).choices[0]
    m = choice.message
    reasoning = extra(m, "reasoning_content")
    assert reasoning and extra(m, "reasoning") == reasoning
    assert "</think>" not in reasoning and "</think>" not in m.content and m.content.strip()
    close = stack.engine.tokenizer.encode("\n</think>\n\n", allow_special=True)
    assert extra(choice, "token_ids")[6:6 + len(close)] == close  # closed after 6 tokens


def test_stream_deltas_carry_the_same_split(stack):
    whole = ask(stack, max_thinking_tokens=6).choices[0].message
    chunks = ask_stream(stack, max_thinking_tokens=6)
    deltas = [c.choices[0].delta for c in chunks if c.choices]
    reasoning = "".join(extra(d, "reasoning_content") or "" for d in deltas)
    assert reasoning == "".join(extra(d, "reasoning") or "" for d in deltas)
    assert reasoning == extra(whole, "reasoning_content")
    assert "".join(d.content or "" for d in deltas) == whole.content
    first_content = next(i for i, d in enumerate(deltas) if d.content)
    assert all(not extra(d, "reasoning_content") for d in deltas[first_content + 1:])


def test_unfinished_reasoning_is_all_reasoning(stack):
    m = ask(stack, max_tokens=8, conclude=False).choices[0].message
    assert m.content == "" and extra(m, "reasoning_content")


def test_blocked_input_is_a_normal_answer_with_content_filter(stack):
    r = ask(stack, BOMB, guard="basic")
    c = r.choices[0]
    assert c.finish_reason == "content_filter" and c.message.content == ""
    assert extra(c, "content_filter") == {"category": "weapons", "guard": "basic",
                                          "stage": "input"}
    assert r.usage.completion_tokens == 0
    chunks = ask_stream(stack, BOMB, guard="basic")
    ends = [c.choices[0] for c in chunks if c.choices and c.choices[0].finish_reason]
    assert [e.finish_reason for e in ends] == ["content_filter"]
    assert extra(ends[0], "content_filter")["category"] == "weapons"
    assert ask(stack, guard="basic").choices[0].finish_reason == "length"  # ordinary: allowed


def test_output_block_stops_the_stream_where_the_blocked_text_begins(stack):
    plain = ask(stack, max_tokens=40, reasoning_effort=None, conclude=False)
    text = extra(plain.choices[0].message, "reasoning_content")
    word = next(w for w in re.findall(r"[A-Za-z]{4,}", text[len(text) // 3:]))
    register_guard(PatternGuard.from_dict("test-words", {"categories": {
        "banned": {"patterns": [re.escape(word)], "stages": ["output"]}}}))
    chunks = ask_stream(stack, max_tokens=40, conclude=False, guard="test-words")
    choices = [c.choices[0] for c in chunks if c.choices]
    streamed = "".join(extra(ch.delta, "reasoning_content") or "" for ch in choices)
    assert choices[-1].finish_reason == "content_filter"
    assert extra(choices[-1], "content_filter") == {"category": "banned",
                                                    "guard": "test-words", "stage": "output"}
    assert word not in streamed and text.startswith(streamed)
    assert len(streamed) < text.index(word) + 1


def test_guard_decisions_and_closed_reasoning_are_in_metrics(stack):
    ask(stack, BOMB, guard="basic")
    ask(stack, max_thinking_tokens=4)
    page = httpx.get(stack.url + "/metrics").text
    assert re.search(r'qwq_guard_decisions_total\{[^}]*decision="block"[^}]*stage="input"', page)
    assert re.search(r'qwq_reasoning_closed_total\{reason="budget"\} [1-9]', page)
    assert re.search(r'qwq_guard_seconds_total\{guard="basic",stage="input"\}', page)


def test_unknown_guard_is_a_400_naming_the_field(stack):
    with pytest.raises(Exception) as e:
        ask(stack, guard="nope")
    assert getattr(e.value, "status_code", None) == 400 and "guard" in str(e.value)


def test_json_starts_after_the_reasoning_even_where_the_model_would_stop(stack):
    """A model that would end at once, inside its reasoning: the grammar waits for the answer,
    so the gate writes `</think>` where the end token was the likeliest, then the JSON
    follows and lands in the content."""
    eos = stack.engine.tokenizer.eos_token_ids[0]
    schema = {"type": "object", "required": ["ok"], "additionalProperties": False,
              "properties": {"ok": {"type": "boolean"}}}
    r = ask(stack, max_tokens=60, logit_bias={str(eos): 100}, return_token_ids=True,
            response_format={"type": "json_schema", "json_schema": {"name": "x",
                                                                     "schema": schema}})
    choice = r.choices[0]
    close = stack.engine.tokenizer.encode("\n</think>\n\n", allow_special=True)
    assert extra(choice, "token_ids")[:len(close)] == close
    assert isinstance(json.loads(choice.message.content)["ok"], bool)
    assert choice.finish_reason == "stop"
