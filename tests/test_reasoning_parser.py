"""Reasoning/content split for think tags and QwQ-32B-Preview's plain style, batch and stream."""

import pytest

from qwq.reasoning.parser import ReasoningStreamer, extract_boxed, has_answer, parse, split

PREVIEW = ("Let me compute 2+3. Two plus three is five.\n\nWait, check: 2+3=5. Yes.\n\n"
           "**Final Answer**\n\n\\[ \\boxed{5} \\]")


def test_think_tags_split_reasoning_from_content():
    out = parse("<think>\nadd them: 5\n</think>\n\nThe sum is \\boxed{5}.")
    assert (out.reasoning, out.content, out.final_answer) == ("add them: 5",
                                                              "The sum is \\boxed{5}.", "5")


def test_close_tag_alone_means_prompt_opened_the_reasoning():
    assert split("thinking...\n</think>\nanswer") == ("thinking...", "answer")


def test_unclosed_think_is_all_reasoning():
    assert split("<think>still going") == ("still going", "")


def test_preview_style_splits_at_last_final_answer_heading():
    out = parse(PREVIEW, "plain")
    assert out.reasoning.endswith("Yes.")
    assert out.content == "\\[ \\boxed{5} \\]"
    assert out.final_answer == "5"


def test_auto_style_finds_preview_heading():
    assert parse(PREVIEW).final_answer == "5"
    assert parse("**Final Answer:** 7").content == "7"


def test_no_reasoning_marker_leaves_text_as_content():
    out = parse("Just an answer.")
    assert out.reasoning is None and out.content == "Just an answer." and out.final_answer is None


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


def _stream(deltas, **kw):
    s = ReasoningStreamer(**kw)
    reasoning, content = "", ""
    for d in deltas:
        r, c = s.feed(d)
        reasoning, content = reasoning + r, content + c
    r, c = s.finish()
    return reasoning + r, content + c


@pytest.mark.parametrize("step", [1, 2, 3, 7, 100])
def test_stream_matches_batch_for_any_chunking(step):
    text = "<think>\nplan: a<b\n</think>\n\nAnswer: <b>bold</b>"
    chunks = [text[i:i + step] for i in range(0, len(text), step)]
    assert _stream(chunks) == ("\nplan: a<b\n", "\n\nAnswer: <b>bold</b>")


def test_stream_holds_back_a_partial_close_tag():
    s = ReasoningStreamer("think", in_reasoning=True)
    assert s.feed("abc</thi") == ("abc", "")
    assert s.feed("nk>done") == ("", "done")


def test_stream_releases_held_text_that_was_not_a_tag():
    s = ReasoningStreamer("think", in_reasoning=True)
    assert s.feed("a </") == ("a ", "")
    assert s.feed("b>") == ("</b>", "")


def test_stream_late_think_tag_is_plain_text():
    assert _stream(["Use the ", "<think>", " tag"]) == ("", "Use the <think> tag")


def test_stream_preview_style_switches_at_heading():
    chunks = [PREVIEW[i:i + 5] for i in range(0, len(PREVIEW), 5)]
    reasoning, content = _stream(chunks, style="plain")
    assert reasoning.rstrip().endswith("Yes.")
    assert content.strip() == "\\[ \\boxed{5} \\]"


def test_stream_rejects_unknown_style():
    with pytest.raises(ValueError):
        ReasoningStreamer("xml")
