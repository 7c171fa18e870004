"""Thinking budget and guaranteed conclusion on scripted token streams."""

from test_reasoning_helpers import FakeTokenizer, drive

from qwq.reasoning.budget import PhaseTracker, ReasoningCloser, conclude_reserve, thinking_budget
from qwq.reasoning.parser import split


def rambling(tok, n_words=400):
    return tok.encode(" ".join(f"step{i % 7} thought" for i in range(n_words)))


def test_effort_maps_to_budget_and_explicit_cap_wins():
    assert thinking_budget(None, None) is None
    assert thinking_budget(None, "low") < thinking_budget(None, "medium") \
        < thinking_budget(None, "high")
    assert thinking_budget(100, "high") == 100


def test_think_budget_closes_reasoning_at_exactly_n_tokens():
    tok = FakeTokenizer()
    closer = ReasoningCloser(tok, PhaseTracker("think"), budget=50, max_tokens=None,
                             conclude=False)
    model = rambling(tok) + tok.encode(" The answer is 4.")
    out, text, _, actions = drive([closer], tok, model, max_tokens=120)
    reasoning, content = split(text, "think")
    assert len(tok.encode(reasoning)) <= 50
    assert out[50:50 + len(closer.close_ids)] == closer.close_ids
    assert content and len(actions) == 1 and closer.closed_by == "budget"


def test_model_that_closes_on_its_own_is_left_alone():
    tok = FakeTokenizer()
    closer = ReasoningCloser(tok, PhaseTracker("think"), budget=50, max_tokens=None,
                             conclude=True)
    model = tok.encode("short thought </think> answer") + rambling(tok)
    _, _, _, actions = drive([closer], tok, model, max_tokens=300)
    assert actions == [] and closer.closed_by is None


def test_plain_style_budget_forces_final_answer_heading():
    tok = FakeTokenizer()
    closer = ReasoningCloser(tok, PhaseTracker("plain"), budget=30, max_tokens=None,
                             conclude=False)
    _, text, _, _ = drive([closer], tok, rambling(tok), max_tokens=60)
    reasoning, content = split(text, "plain")
    assert "**Final Answer**" in text and content
    assert len(tok.encode(reasoning)) <= 30


def test_conclude_spends_the_reserve_before_max_tokens():
    tok = FakeTokenizer()
    closer = ReasoningCloser(tok, PhaseTracker("plain"), budget=None, max_tokens=200,
                             conclude=True)
    out, text, reason, _ = drive([closer], tok, rambling(tok), max_tokens=200)
    assert closer.closed_by == "conclude" and reason == "length"
    heading_at = out.index(closer.close_ids[0], 200 - conclude_reserve(200) - 1)
    assert heading_at == 200 - conclude_reserve(200)
    assert split(text, "plain")[1]  # some answer text in the reserve


def test_without_conclude_nothing_is_forced():
    tok = FakeTokenizer()
    closer = ReasoningCloser(tok, PhaseTracker("plain"), budget=None, max_tokens=200,
                             conclude=False)
    assert drive([closer], tok, rambling(tok), max_tokens=200)[3] == []


def test_reserve_is_bounded():
    assert conclude_reserve(512) == 64
    assert conclude_reserve(20) == 10
    assert conclude_reserve(100_000) == 512
