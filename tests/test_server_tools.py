"""Tool calls: Qwen's `<tool_call>` blocks parsed into OpenAI tool_calls, streamed as OpenAI
streams them (id and name first, then argument fragments as the model writes them), checked
with the `openai` client's own streaming helpers against a live server (tiny random Qwen2, real
Qwen tokenizer: the grammar makes its calls valid)."""

import json
from itertools import pairwise

from hypothesis import given, settings
from hypothesis import strategies as st
from test_server_support import served, start_stack

from qwq.server.tools import ToolCallStream, parse_tool_calls

HI = [{"role": "user", "content": "Hi there"}]
WEATHER = [{"type": "function", "function": {
    "name": "get_weather", "description": "Weather in a city", "strict": True,
    "parameters": {"type": "object", "required": ["city", "days"], "additionalProperties": False,
                   "properties": {"city": {"enum": ["Paris", "Tokyo"]},
                                  "days": {"type": "integer"}}}}}]
TWO_CALLS = ('Let me check.\n<tool_call>\n{"name": "f", "arguments": {"x": [1, "a}<\\""]}}\n'
             '</tool_call>\n<tool_call>\n{"arguments": {}, "name": "g"}\n</tool_call>')

stack, _settled = served(lambda: start_stack())


def _feed_all(pieces):
    stream = ToolCallStream()
    content, deltas = "", []
    for piece in pieces + [None]:
        c, d = stream.finish() if piece is None else stream.feed(piece)
        content, deltas = content + c, deltas + d
    return content, deltas, stream.calls


def test_qwen_tool_call_blocks_parse_into_calls():
    content, calls = parse_tool_calls(TWO_CALLS)
    assert content == "Let me check."
    assert [(c["function"]["name"], json.loads(c["function"]["arguments"])) for c in calls] \
        == [("f", {"x": [1, 'a}<"']}), ("g", {})]
    assert parse_tool_calls("<tool_call>not json</tool_call>") == \
        ("<tool_call>not json</tool_call>", [])


def test_a_call_streams_its_name_first_then_argument_fragments():
    pieces = ["Let me", " check.\n<tool", "_call>\n{", '"name": "f", "argu', 'ments": {"x"',
              ': 1', ', "y": 2}}', "\n</tool_call>"]
    content, deltas, calls = _feed_all(pieces)
    assert content == "Let me check.\n"
    head, *fragments = deltas
    assert head["id"].startswith("call_") and head["function"] == {"name": "f", "arguments": ""}
    assert [f["function"]["arguments"] for f in fragments] == ['{"x"', ": 1", ', "y": 2}']
    assert all(f["index"] == 0 and "id" not in f for f in fragments)
    assert calls[0]["function"]["arguments"] == '{"x": 1, "y": 2}'


def test_a_call_cut_off_by_the_end_keeps_the_arguments_written():
    _, calls = parse_tool_calls('<tool_call>\n{"name": "f", "arguments": {"x": 1')
    assert calls[0]["function"] == {"name": "f", "arguments": '{"x": 1'}


@settings(max_examples=200, deadline=None, derandomize=True)
@given(cuts=st.lists(st.integers(0, len(TWO_CALLS)), max_size=20))
def test_streamed_calls_match_the_whole_answer_for_every_cut(cuts):
    points = sorted(set(cuts) | {0, len(TWO_CALLS)})
    content, deltas, calls = _feed_all([TWO_CALLS[a:b] for a, b in pairwise(points)])
    whole_content, whole_calls = parse_tool_calls(TWO_CALLS)
    assert content.strip() == whole_content
    assert [c["function"] for c in calls] == [c["function"] for c in whole_calls]
    merged = {}
    for d in deltas:  # what a client accumulates from the deltas
        merged.setdefault(d["index"], "")
        merged[d["index"]] += d["function"]["arguments"]
    assert [merged[i] for i in sorted(merged)] == [c["function"]["arguments"] for c in calls]


def test_openai_stream_helpers_see_incremental_tool_call_deltas(stack):
    client = stack.client()
    ask = {"model": "tiny", "messages": HI, "tools": WEATHER, "max_tokens": 96,
           "temperature": 0, "tool_choice": {"type": "function",
                                             "function": {"name": "get_weather"}}}
    whole = client.chat.completions.create(**ask).choices[0]
    with client.chat.completions.stream(**ask) as stream:
        events = list(stream)
        final = stream.get_final_completion()
    deltas = [e for e in events if e.type == "tool_calls.function.arguments.delta"]
    done = [e for e in events if e.type == "tool_calls.function.arguments.done"]
    chunks = [e.chunk for e in events if e.type == "chunk"]
    with_calls = [i for i, c in enumerate(chunks) if c.choices and c.choices[0].delta.tool_calls]
    first = chunks[with_calls[0]].choices[0].delta.tool_calls[0]
    assert first.id.startswith("call_") and first.function.name == "get_weather"
    assert len(deltas) >= 3  # the arguments arrive in pieces, as they are written ...
    assert all(chunks[i].choices[0].finish_reason is None for i in with_calls[:3])  # not held
    assert len(done) == 1 and done[0].name == "get_weather"
    assert done[0].parsed_arguments == json.loads(done[0].arguments)
    assert done[0].parsed_arguments["city"] in ("Paris", "Tokyo")
    assert done[0].arguments == whole.message.tool_calls[0].function.arguments
    assert final.choices[0].finish_reason == "tool_calls" == whole.finish_reason
    assert final.choices[0].message.tool_calls[0].function.arguments == done[0].arguments
