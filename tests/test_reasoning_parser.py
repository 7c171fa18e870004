"""The one reasoning/content split, for think tags and QwQ-32B-Preview's plain style: whole
answers (split, parse) and streams (ReasoningStreamer) give the same parts for every way of
cutting the text into deltas."""

from itertools import pairwise

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qwq.reasoning.parser import ReasoningStreamer, extract_boxed, has_answer, parse, split

PREVIEW = ("Let me compute 2+3. Two plus three is five.\n\nWait, check: 2+3=5. Yes.\n\n"
           "**Final Answer**\n\n\\[ \\boxed{5} \\]")
TWICE = "Let me think. **Final Answer** 5 then more thinking. **Final Answer** \\boxed{6}"


def _stream(deltas, **kw):
    s = ReasoningStreamer(**kw)
    reasoning, content = "", ""
    for d in deltas:
        r, c = s.feed(d)
        reasoning, content = reasoning + r, content + c
    r, c = s.finish()
    return reasoning + r, content + c


def _cut(text, cuts):
    points = sorted({min(c, len(text)) for c in cuts} | {0, len(text)})
    return [text[a:b] for a, b in pairwise(points)]


def test_think_tags_split_reasoning_from_content():
    out = parse("<think>\nadd them: 5\n</think>\n\nThe sum is \\boxed{5}.")
    assert (out.reasoning, out.content, out.final_answer) == ("add them: 5",
                                                              "The sum is \\boxed{5}.", "5")


def test_close_tag_alone_means_prompt_opened_the_reasoning():
    assert split("thinking...\n</think>\nanswer") == ("thinking...", "answer")


def test_unclosed_think_is_all_reasoning():
    assert split("<think>still going") == ("still going", "")


def test_preview_style_splits_at_the_heading():
    out = parse(PREVIEW, "plain")
    assert out.reasoning.endswith("Yes.")
    assert out.content == "\\[ \\boxed{5} \\]"
    assert out.final_answer == "5"


def test_first_heading_starts_the_answer_and_the_last_box_is_the_final_answer():
    """The issue's first row: the answer starts at the first heading (a stream cannot take
    text back), and the revised answer under the second heading is the final answer."""
    out = parse(TWICE, "plain")
    assert out.reasoning == "Let me think."
    assert out.content == "5 then more thinking. **Final Answer** \\boxed{6}"
    assert out.final_answer == "6"
    assert _stream(_cut(TWICE, range(0, len(TWICE), 3)), style="plain") == \
        (out.reasoning, out.content)


def test_heading_in_any_case_with_a_colon_starts_the_answer():
    text = "Reasoning here.\n\n**final answer**: 7"
    assert split(text, "plain") == ("Reasoning here.", "7")
    assert _stream(list(text), style="plain") == ("Reasoning here.", "7")
    assert split("Hmm.\n### FINAL ANSWER:\n\\boxed{3}", "plain") == ("Hmm.", "\\boxed{3}")


def test_auto_style_finds_preview_heading():
    assert parse(PREVIEW).final_answer == "5"
    assert parse("**Final Answer:** 7").content == "7"


def test_no_reasoning_marker_leaves_text_as_content():
    out = parse("Just an answer.")
    assert out.reasoning is None and out.content == "Just an answer." and out.final_answer is None


def test_plain_style_without_a_heading_never_started_its_answer():
    assert split("Still working on it \\boxed{4}", "plain") == \
        ("Still working on it \\boxed{4}", "")
    assert parse("Still working on it \\boxed{4}", "plain").final_answer == "4"


def test_a_tool_call_ends_the_reasoning_when_tools_are_offered():
    text = 'I need the weather.\n<tool_call>\n{"name": "f"}\n</tool_call>'
    assert split(text, "plain", tools=True) == ("I need the weather.",
                                                '<tool_call>\n{"name": "f"}\n</tool_call>')
    assert split(text, "plain") == (text, "")
    assert _stream(list(text), style="think", in_reasoning=True, tools=True) == \
        split(text, "plain", tools=True)


def test_boxed_with_nested_braces_and_last_one_wins():
    text = r"first \boxed{1} then \boxed{\frac{a}{b^{2}}} and \boxed{x \{y\}"
    assert extract_boxed(text) == r"\frac{a}{b^{2}}"
    assert extract_boxed(r"\fbox{ 42 }") == "42"
    assert extract_boxed(r"\boxed{unclosed") is None


def test_boxed_found_in_reasoning_when_content_empty():
    assert parse("<think>so \\boxed{9}").final_answer == "9"


def test_has_answer_per_style():
    assert not has_answer("<think>hmm", "think") and has_answer("x</think>y", "think")
    assert has_answer("blah\n**Final Answer**\n", "plain") and not has_answer("blah", "plain")
    assert has_answer("blah **FINAL ANSWER**", "plain")


def test_reasoning_ends_when_the_marker_is_complete_and_says_where():
    s = ReasoningStreamer("plain")
    s.feed("abc **Final Answer")
    assert not s.reasoning_ended
    s.feed("**")  # a colon may still follow, but the answer has begun
    assert s.reasoning_ended and s.answer_offset == len("abc **Final Answer**")
    t = ReasoningStreamer("think", in_reasoning=True, tools=True)
    t.feed("plan <tool_")
    assert not t.reasoning_ended
    t.feed("call>{")
    assert t.reasoning_ended and t.answer_offset == len("plan ")  # the call is the answer


@pytest.mark.parametrize("step", [1, 2, 3, 7, 100])
def test_stream_matches_batch_for_any_chunking(step):
    text = "<think>\nplan: a<b\n</think>\n\nAnswer: <b>bold</b>"
    chunks = [text[i:i + step] for i in range(0, len(text), step)]
    assert _stream(chunks) == ("plan: a<b", "Answer: <b>bold</b>")
    assert _stream(chunks, style="think", in_reasoning=True) == split(text, "think")


def test_stream_holds_back_a_partial_close_tag():
    s = ReasoningStreamer("think", in_reasoning=True)
    assert s.feed("abc</thi") == ("abc", "")
    assert s.feed("nk>done") == ("", "done")


def test_stream_holds_trailing_space_until_more_text_follows():
    s = ReasoningStreamer("think", in_reasoning=True)
    assert s.feed("a ") == ("a", "")
    assert s.feed("b\n\n") == (" b", "")
    assert s.feed("</think>\n\nok ") == ("", "ok")
    assert s.finish() == ("", "")


def test_stream_releases_held_text_that_was_not_a_tag():
    s = ReasoningStreamer("think", in_reasoning=True)
    assert s.feed("a </") == ("a", "")
    assert s.feed("b>") == (" </b>", "")


def test_stream_late_think_tag_is_plain_text():
    assert _stream(["Use the ", "<think>", " tag"]) == ("", "Use the <think> tag")


def test_stream_preview_style_switches_at_heading():
    chunks = [PREVIEW[i:i + 5] for i in range(0, len(PREVIEW), 5)]
    assert _stream(chunks, style="plain") == split(PREVIEW, "plain")


def test_stream_rejects_unknown_style():
    with pytest.raises(ValueError):
        ReasoningStreamer("xml")


# Pieces that make the split hard: markers in several cases and forms, their prefixes, tags
# that are not markers, whitespace runs at the joins.
PIECES = ["<think>", "</think>", "<thi", "</", "<b>", "**Final Answer**", "**final answer**:",
          "**FINAL ANSWER:**", "**Final", " Answer", "**", "### Final Answer", "## final answer:",
          "#", "<tool_call>", "<tool", "\n", "\n\n", " ", "  ", "x", "5", "Wait,", ":",
          "\\boxed{6}", "so the answer is", "é漢"]


@settings(max_examples=400, deadline=None, derandomize=True)
@given(pieces=st.lists(st.sampled_from(PIECES), max_size=14),
       cuts=st.lists(st.integers(0, 200), max_size=12),
       style=st.sampled_from(["think", "plain"]), in_reasoning=st.booleans(),
       tools=st.booleans())
def test_stream_matches_batch_for_every_cut(pieces, cuts, style, in_reasoning, tools):
    """Property: feeding any cut of the text equals splitting it whole, and the whole split
    equals split()'s (same rule), with the same moment the reasoning ends."""
    text = "".join(pieces)
    whole = ReasoningStreamer(style, in_reasoning, tools)
    expected = whole.split(text)
    streamer = ReasoningStreamer(style, in_reasoning, tools)
    got = ["", ""]
    for delta in _cut(text, cuts):
        r, c = streamer.feed(delta)
        got = [got[0] + r, got[1] + c]
    r, c = streamer.finish()
    assert (got[0] + r, got[1] + c) == expected
    assert streamer.reasoning_ended == whole.reasoning_ended
    assert streamer.answer_offset == whole.answer_offset
    if in_reasoning:
        assert split(text, style, tools) == expected
    assert expected == (expected[0].strip(), expected[1].strip())
