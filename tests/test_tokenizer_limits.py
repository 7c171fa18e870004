"""Encoding under a token limit (the server's early refusal): long texts go a piece at a time,
the pieces' ids add up to the whole text's, a count past the limit stops early, and the
encoding leaves the GIL to other threads."""

import random
import threading
import time

import pytest

from qwq.errors import TooManyTokens
from qwq.tokenizer import PIECE_CHARS

WORDS = ["the", "quokka", "  ", "\n", "\n\n", "don't", "x=1;", "42", "3.14", "—", "中文字符",
         "日本語", "émigré", "e\u0301", "<|im_start|>", "<|im_end|>", "    ", "\t", "!!", "🙂",
         "\r\n", "'s", "ﬁ", "//----", " ", "a b", "Ünïcödé"]


def text_of(rng: random.Random, chars: int) -> str:
    out, n = [], 0
    while n < chars:
        word = rng.choice(WORDS)
        out.append(word + (" " if rng.random() < 0.6 else ""))
        n += len(out[-1])
    return "".join(out)


@pytest.mark.parametrize("allow_special", [False, True])
def test_pieces_add_up_to_the_whole_text(tokenizer, allow_special):
    assert tokenizer._cuttable()
    backend = tokenizer.backend if allow_special else tokenizer._plain()
    rng = random.Random(0)
    for _ in range(4):
        text = text_of(rng, 3 * PIECE_CHARS + rng.randrange(1000))
        assert len(list(tokenizer._pieces(text))) >= 3
        whole = backend.encode(text, add_special_tokens=False).ids
        assert tokenizer.encode(text, allow_special=allow_special) == whole


def test_a_text_without_cut_points_is_one_piece(tokenizer):
    text = "中文" * PIECE_CHARS
    assert list(tokenizer._pieces(text)) == [text]
    assert tokenizer.encode(text) == tokenizer._plain().encode(text,
                                                               add_special_tokens=False).ids


def test_the_limit_is_exact(tokenizer):
    text = text_of(random.Random(1), 2 * PIECE_CHARS)
    n = len(tokenizer.encode(text))
    assert len(tokenizer.encode(text, max_tokens=n)) == n
    with pytest.raises(TooManyTokens):
        tokenizer.encode(text, max_tokens=n - 1)
    msgs = [{"role": "user", "content": text}]
    chat = tokenizer.encode_chat(msgs)
    assert tokenizer.encode_chat(msgs, max_tokens=len(chat)) == chat
    with pytest.raises(TooManyTokens):
        tokenizer.encode_chat(msgs, max_tokens=len(chat) - 1)


def test_a_long_text_past_the_limit_is_refused_after_a_few_pieces(tokenizer, monkeypatch):
    seen = []
    real = type(tokenizer)._pieces

    def pieces(self, text):
        for piece in real(self, text):
            seen.append(len(piece))
            yield piece

    monkeypatch.setattr(type(tokenizer), "_pieces", pieces)
    text = text_of(random.Random(2), 3_000_000)
    with pytest.raises(TooManyTokens):
        tokenizer.encode(text, max_tokens=32_767)
    assert sum(seen) < 400_000  # ~4 characters a token: the rest was never encoded


def test_a_text_longer_than_any_tokens_could_spell_is_refused_before_encoding(tokenizer,
                                                                              monkeypatch):
    assert tokenizer.max_token_chars == 128  # Qwen's longest token: 128 spaces
    monkeypatch.setattr(type(tokenizer), "_pieces", lambda *a: pytest.fail("encoded"))
    with pytest.raises(TooManyTokens):
        tokenizer.encode("x" * (100 * 128 + 1), max_tokens=100)


def test_encoding_a_long_text_leaves_the_gil_to_other_threads(tokenizer):
    text = text_of(random.Random(3), 2_000_000)
    worker = threading.Thread(target=tokenizer.encode, args=(text,))
    gaps, last = [], time.monotonic()
    worker.start()
    while worker.is_alive():
        time.sleep(0.005)
        now = time.monotonic()
        gaps.append(now - last)
        last = now
    assert len(gaps) > 10 and max(gaps) < 0.5, max(gaps)
