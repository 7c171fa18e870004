"""Script classes per token, language detection, the masking processor, the mixing rate."""

import pytest
import torch

from qwq.reasoning.language import (
    CYRILLIC,
    GREEK,
    HAN,
    HANGUL,
    KANA,
    LATIN,
    LanguageControl,
    bytes_scripts,
    char_script,
    detect_language,
    mixing_rate,
    token_scripts,
    user_text,
)


@pytest.mark.parametrize("ch,script", [("a", LATIN), ("é", LATIN), ("π", GREEK), ("ж", CYRILLIC),
                                       ("中", HAN), ("，", HAN), ("。", HAN), ("の", KANA),
                                       ("한", HANGUL), ("7", 0), ("+", 0), (" ", 0), ("{", 0)])
def test_char_scripts(ch, script):
    assert char_script(ch) == script


def test_partial_utf8_token_is_classed_by_what_it_can_become():
    han = "中".encode()
    assert bytes_scripts(han[:2]) == HAN  # lead + one continuation: only Han completions
    assert bytes_scripts(han[:1]) == HAN  # E4: U+4000..U+4FFF, all Han
    assert bytes_scripts(b"\xe2") == 0  # E2: punctuation to CJK radicals: undecided
    assert bytes_scripts(han[1:]) == 0  # the tail of a character begun earlier
    assert bytes_scripts(b" the" + han[:2]) == LATIN | HAN


def test_detect_language_reads_the_last_user_turn():
    prompt = ("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
              "<|im_start|>user\n今天天气怎么样？<|im_end|>\n<|im_start|>assistant\n")
    assert user_text(prompt) == "今天天气怎么样？"
    assert detect_language(prompt) == "zh"
    assert detect_language("Wie geht es dir?") == "en"  # by script: Latin
    assert detect_language("Привет, как дела?") == "ru"
    assert detect_language("こんにちは、元気ですか") == "ja"
    assert detect_language("12 + 5 = ?") == "en"


def test_mixing_rate_counts_foreign_units_outside_code_and_quotes():
    assert mixing_rate("The answer is five.", "en") == 0.0
    assert mixing_rate("The answer is 答案", "en") == pytest.approx(2 / 5)
    assert mixing_rate("Use `变量` here: ```\nx = '中文'\n``` fine", "en") == 0.0
    assert mixing_rate('He said "你好" to me', "en") == 0.0
    assert mixing_rate("答案是五 ok") == 0.0  # Latin (code, names) is allowed everywhere
    assert mixing_rate("答案是五 привет") == pytest.approx(1 / 5)  # dominant script Han


class ByteTokenizer:
    """Five tokens: Latin, Han, a digit, Cyrillic, a special token."""

    vocab_size = 5

    def token_bytes(self, skip_special):
        return [b" hello", "你好".encode(), b"7", " мир".encode(), b""]

    def special_token_ids(self):
        return {4}


def test_language_control_masks_foreign_scripts_only():
    control = LanguageControl(ByteTokenizer(), "en")
    out = control.process_logits([], torch.zeros(8))  # logits may be wider than the vocab
    assert out.tolist()[:5] == [0.0, float("-inf"), 0.0, float("-inf"), 0.0]
    assert out[5:].eq(0).all()


def test_language_control_keeps_the_users_own_tokens():
    control = LanguageControl(ByteTokenizer(), "en", exempt_ids=[1])
    assert control.process_logits([], torch.zeros(5))[1] == 0
    zh = LanguageControl(ByteTokenizer(), "zh")
    assert zh.process_logits([], torch.zeros(5)).tolist()[:4] == [0, 0, 0, float("-inf")]


def test_soft_penalty_lowers_instead_of_masking():
    control = LanguageControl(ByteTokenizer(), "en", penalty=5.0)
    assert control.process_logits([], torch.zeros(5))[1] == -5.0


def test_unknown_language_is_rejected():
    with pytest.raises(ValueError):
        LanguageControl(ByteTokenizer(), "xx")


@pytest.fixture(scope="module")
def qwen_tokenizer():
    from qwq.models import load_tokenizer
    return load_tokenizer(None)[0]


def test_qwen_vocab_classes(qwen_tokenizer):
    table = token_scripts(qwen_tokenizer)
    assert table is token_scripts(qwen_tokenizer)  # computed once

    def scripts(text):
        return {int(table[i]) for i in qwen_tokenizer.encode(text)}

    assert scripts("你好，世界") == {HAN}
    assert scripts(" the answer") == {LATIN}
    assert scripts("x = 12 + (3 * 4);\n") <= {0, LATIN}
    assert scripts("0123456789.,;:!?()[]{}+-*/=<>") == {0}
    assert int(table[qwen_tokenizer.eos_token_id]) == 0
