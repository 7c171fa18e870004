"""Language consistency: script classes per token, the user's script, a masking processor, and
a mixing rate.

Each token id gets a bit set of the scripts its letters belong to (0 for digits, punctuation,
spaces, maths and code symbols, special tokens). A request held to a language may only sample
tokens whose scripts are allowed for it; neutral tokens are always allowed. Latin (code,
identifiers, units) and Greek (maths) are allowed for every language. Tokens that hold a
partial UTF-8 character are classed by the characters their bytes can still become.
"""

from __future__ import annotations

import bisect
import re
import threading
import unicodedata
import weakref

import torch

from qwq.logits_processor import LogitsProcessor
from qwq.reasoning.actions import SequenceControl

LATIN, GREEK, CYRILLIC, HAN, KANA, HANGUL, ARABIC, HEBREW, DEVANAGARI, THAI, OTHER = (
    1 << i for i in range(11))
SCRIPT_NAMES = {LATIN: "latin", GREEK: "greek", CYRILLIC: "cyrillic", HAN: "han", KANA: "kana",
                HANGUL: "hangul", ARABIC: "arabic", HEBREW: "hebrew",
                DEVANAGARI: "devanagari", THAI: "thai", OTHER: "other"}
ALWAYS_ALLOWED = LATIN | GREEK

# (first code point, last code point, script) for letters; anything else alphabetic is OTHER.
_RANGES = sorted([
    (0x0041, 0x024F, LATIN), (0x1E00, 0x1EFF, LATIN), (0xFF21, 0xFF5A, HAN),
    (0x0370, 0x03FF, GREEK), (0x1F00, 0x1FFF, GREEK), (0x0400, 0x052F, CYRILLIC),
    (0x0590, 0x05FF, HEBREW), (0x0600, 0x06FF, ARABIC), (0x0750, 0x077F, ARABIC),
    (0x0900, 0x097F, DEVANAGARI), (0x0E00, 0x0E7F, THAI), (0x1100, 0x11FF, HANGUL),
    (0x2E80, 0x2FDF, HAN), (0x3000, 0x303F, HAN), (0x3040, 0x30FF, KANA),
    (0x3130, 0x318F, HANGUL), (0x31F0, 0x31FF, KANA), (0x3400, 0x4DBF, HAN),
    (0x4E00, 0x9FFF, HAN), (0xAC00, 0xD7AF, HANGUL), (0xF900, 0xFAFF, HAN),
    (0xFF01, 0xFF20, HAN), (0xFF5B, 0xFF65, HAN), (0xFF66, 0xFF9F, KANA),
    (0x20000, 0x3FFFF, HAN),
])
_STARTS = [r[0] for r in _RANGES]
# CJK punctuation and fullwidth forms count as Han: a "，" or "。" in an English answer is mixing.
_CJK_PUNCT = ((0x3000, 0x303F), (0xFF01, 0xFF20), (0xFF3B, 0xFF40), (0xFF5B, 0xFF65))

LANGUAGE_SCRIPTS = {
    **{code: LATIN for code in ("en", "fr", "de", "es", "it", "pt", "nl", "sv", "da", "no",
                                "fi", "pl", "cs", "ro", "hu", "tr", "vi", "id", "ms")},
    "zh": HAN, "ja": HAN | KANA, "ko": HANGUL | HAN, "ru": CYRILLIC, "uk": CYRILLIC,
    "bg": CYRILLIC, "sr": CYRILLIC, "el": GREEK, "ar": ARABIC, "fa": ARABIC, "he": HEBREW,
    "hi": DEVANAGARI, "th": THAI,
}


def char_script(ch: str) -> int:
    """The script bit of one character, 0 when it is not a letter of any script."""
    cp = ord(ch)
    if any(lo <= cp <= hi for lo, hi in _CJK_PUNCT):
        return HAN
    if not ch.isalpha():
        return 0
    i = bisect.bisect_right(_STARTS, cp) - 1
    if i >= 0 and _RANGES[i][0] <= cp <= _RANGES[i][1]:
        return _RANGES[i][2]
    return 0 if unicodedata.category(ch) == "Lm" else OTHER


def text_scripts(text: str) -> int:
    mask = 0
    for ch in text:
        mask |= char_script(ch)
    return mask


def bytes_scripts(raw: bytes) -> int:
    """Scripts of a token's bytes; a partial character at either end is classed by what it
    can still become (the lowest and highest completion agree) or not at all."""
    start = 0
    while start < len(raw) and 0x80 <= raw[start] < 0xC0:
        start += 1  # continuation bytes of a character begun in an earlier token
    body = raw[start:]
    text = body.decode("utf-8", errors="ignore")
    mask = text_scripts(text)
    tail = _partial_tail(body)
    if tail:
        need = _utf8_len(tail[0]) - len(tail)
        low = (tail + b"\x80" * need).decode("utf-8", errors="ignore")
        high = (tail + b"\xbf" * need).decode("utf-8", errors="ignore")
        if low and high and char_script(low) == char_script(high):
            mask |= char_script(low)
    return mask


def _utf8_len(lead: int) -> int:
    return 2 if lead < 0xE0 else 3 if lead < 0xF0 else 4


def _partial_tail(raw: bytes) -> bytes:
    for back in range(1, min(4, len(raw)) + 1):
        b = raw[-back]
        if b >= 0xC0:  # a lead byte: complete only if all its continuation bytes follow
            return raw[-back:] if _utf8_len(b) > back else b""
        if b < 0x80:
            return b""
    return b""


_tables: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_tables_lock = threading.Lock()


def token_scripts(tokenizer) -> torch.Tensor:
    """int32 (vocab,) script masks for a tokenizer, computed once (~1 s for 152k tokens)."""
    with _tables_lock:
        table = _tables.get(tokenizer)
        if table is None:
            table = _build_table(tokenizer)
            _tables[tokenizer] = table
        return table


def _build_table(tokenizer) -> torch.Tensor:
    raw = tokenizer.token_bytes(True) if hasattr(tokenizer, "token_bytes") else None
    special = tokenizer.special_token_ids() if hasattr(tokenizer, "special_token_ids") else set()
    if raw is None:  # not byte-level: decode each id
        raw = [tokenizer.decode([i]).encode() for i in range(tokenizer.vocab_size)]
    masks = [0 if i in special else bytes_scripts(b) for i, b in enumerate(raw)]
    return torch.tensor(masks, dtype=torch.int32)


def allowed_scripts(language: str) -> int:
    if language not in LANGUAGE_SCRIPTS:
        raise ValueError(f"unknown language {language!r}; known: "
                         f"{', '.join(sorted(LANGUAGE_SCRIPTS))}")
    return LANGUAGE_SCRIPTS[language] | ALWAYS_ALLOWED


_USER_TURN = re.compile(r"<\|im_start\|>user\n(.*?)(?:<\|im_end\|>|$)", re.DOTALL)


def user_text(prompt: str, all_turns: bool = False) -> str:
    """The last user turn of a ChatML prompt (all of them, joined, with all_turns), or the
    whole prompt when it has no turns."""
    turns = _USER_TURN.findall(prompt)
    if not turns:
        return prompt
    return "\n".join(turns) if all_turns else turns[-1]


def detect_language(text: str) -> str:
    """The language code of the dominant script of the text (of its last user turn when it is
    a ChatML prompt). Detection is by script: any Latin-script text is "en"."""
    counts = script_units(strip_code(user_text(text)))
    if not counts:
        return "en"
    script = max(counts, key=counts.get)
    if script == HAN and counts.get(KANA, 0) > 0:
        return "ja"
    if script == KANA:
        return "ja"
    if script == HAN and counts.get(HANGUL, 0) > 0:
        return "ko"
    by_script = {LATIN: "en", HAN: "zh", HANGUL: "ko", CYRILLIC: "ru", GREEK: "el",
                 ARABIC: "ar", HEBREW: "he", DEVANAGARI: "hi", THAI: "th"}
    return by_script.get(script, "en")


_CODE = re.compile(r"```.*?(?:```|$)|`[^`\n]*`", re.DOTALL)
_QUOTED = re.compile(r"\"[^\"\n]*\"|“[^”\n]*”|「[^」\n]*」")


def strip_code(text: str) -> str:
    return _CODE.sub(" ", text)


def script_units(text: str) -> dict[int, int]:
    """Units per script: a word for alphabetic scripts, a character for Han, kana and Thai."""
    counts: dict[int, int] = {}
    prev = 0
    for ch in text:
        s = char_script(ch)
        if s and (s in (HAN, KANA, THAI) or s != prev) and ch.isalpha():
            counts[s] = counts.get(s, 0) + 1
        prev = s if ch.isalpha() else 0
    return counts


def mixing_rate(text: str, language: str | None = None) -> float:
    """Share of script units (words, CJK characters) outside the expected scripts, leaving out
    code and quoted text. Expected: the language's scripts, else the dominant script."""
    counts = script_units(_QUOTED.sub(" ", strip_code(text)))
    total = sum(counts.values())
    if not total:
        return 0.0
    if language is not None:
        allowed = allowed_scripts(language)
    else:
        allowed = max(counts, key=counts.get) | ALWAYS_ALLOWED
    foreign = sum(n for s, n in counts.items() if not s & allowed)
    return foreign / total


class LanguageControl(SequenceControl):
    """Mask (or, with a finite penalty, lower) tokens of scripts outside the allowed set.
    Tokens of the prompt stay allowed, so quoting the user's input still works."""

    def __init__(self, tokenizer, language: str, exempt_ids: list[int] | None = None,
                 penalty: float = float("inf")):
        self.language = language
        table = token_scripts(tokenizer)
        banned = (table & ~allowed_scripts(language)) != 0
        if exempt_ids:
            ids = torch.tensor(sorted(set(exempt_ids)), dtype=torch.long)
            banned[ids[ids < len(banned)]] = False
        self.banned = banned
        self.penalty = penalty
        self._on: dict[tuple[torch.device, int], torch.Tensor] = {}

    def logits_processor(self) -> LogitsProcessor:
        return self.process_logits

    def process_logits(self, output_ids: list[int], logits: torch.Tensor) -> torch.Tensor:
        # the banned ids as an index: filling a few thousand entries is ~10x cheaper than a
        # boolean mask over the whole vocabulary, and this runs for every token
        banned = self._banned_ids(logits)
        if self.penalty == float("inf"):
            return logits.index_fill_(-1, banned, float("-inf"))
        return logits.index_add_(-1, banned, torch.full(banned.shape, -self.penalty,
                                                        dtype=logits.dtype,
                                                        device=logits.device))

    def _banned_ids(self, logits: torch.Tensor) -> torch.Tensor:
        key = (logits.device, logits.shape[-1])
        if key not in self._on:
            n = min(len(self.banned), logits.shape[-1])
            self._on[key] = self.banned[:n].nonzero().squeeze(1).to(logits.device)
        return self._on[key]
