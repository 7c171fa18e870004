"""Tokenizer: Qwen2's byte-level BPE (from tokenizer.json or GGUF metadata), chat prompts that keep
message text out of the control tokens, and an incremental, UTF-8 safe detokenizer."""

from __future__ import annotations

import codecs
import itertools
import json
import os
import re
import threading
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import tokenizers
from tokenizers import AddedToken, Regex, decoders, models, pre_tokenizers

from qwq.chat_template import (
    DEFAULT_MAX_OUTPUT_CHARS,
    DEFAULT_TIME_LIMIT,
    ChatTemplate,
    get_chat_template,
    plain_data,
    prepare_messages,
)
from qwq.errors import CheckpointError, TemplateError, TooManyTokens

# How Qwen2's merges were learned: letters, single digits, punctuation runs, newline runs, spaces.
QWEN2_SPLIT_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
# tokenizer.ggml.pre values that name Qwen2's split.
GGUF_PRE_PATTERNS = {"qwen2": QWEN2_SPLIT_PATTERN, "deepseek-r1-qwen": QWEN2_SPLIT_PATTERN}
TOKEN_TYPE_CONTROL = 3  # llama.cpp's token types: control tokens are special added tokens,
TOKEN_TYPE_USER_DEFINED = 4  # user-defined ones are added tokens matched whole but not special
_STOP_TOKENS = ("<|im_end|>", "<|endoftext|>")  # end a turn / a document in every Qwen2 model
_MAX_VOCAB = 1 << 22
# Long texts are encoded a piece of about this many characters at a time (~20 ms each), cut
# only at a space between two non-spaces: Qwen2's split always cuts there, so the pieces' ids
# add up to the whole text's, and a count past a limit can stop early.
PIECE_CHARS = 1 << 14
_CUT = re.compile(r"(?<=\S) (?=\S)")


# -- GGUF ---------------------------------------------------------------------------------------
def read_gguf_tokenizer_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """The tokenizer.* metadata of a GGUF file, under short names (tokens, merges, token_type,
    bos/eos/padding_token_id, chat_template, pre, model), read with the bounded header parser
    (the file is untrusted)."""
    # lazy: `import qwq` does not load the GGUF reader (gguf, numpy) and qwq.model with it
    from qwq.weights.gguf_file import read_gguf_header

    meta = read_gguf_header(Path(path)).metadata
    return {key.removeprefix("tokenizer.ggml.").removeprefix("tokenizer."): value
            for key, value in meta.items() if key.startswith("tokenizer.")}


def _checked_metadata(meta: Mapping[str, Any]) -> dict[str, Any]:
    """Short key names, and every value the tokenizer uses checked for type and range."""
    meta = {k.removeprefix("tokenizer.ggml.").removeprefix("tokenizer."): v
            for k, v in meta.items()}
    if meta.get("model") != "gpt2":
        raise CheckpointError(f"GGUF tokenizer model {meta.get('model')!r} is not supported: "
                              "Qwen2 models use byte-level BPE ('gpt2')")
    # files converted before llama.cpp recorded the pre-tokenizer: Qwen2 is all qwq runs
    meta["pre"] = meta.get("pre") or "qwen2"
    if meta["pre"] not in GGUF_PRE_PATTERNS:
        raise CheckpointError(f"GGUF pre-tokenizer {meta.get('pre')!r} is not supported "
                              f"(known: {', '.join(sorted(GGUF_PRE_PATTERNS))})")
    tokens, merges = meta.get("tokens"), meta.get("merges")
    types = meta.get("token_type") or [1] * len(tokens or ())
    if not isinstance(tokens, list) or not 0 < len(tokens) <= _MAX_VOCAB \
            or not all(isinstance(t, str) for t in tokens):
        raise CheckpointError("GGUF tokenizer.ggml.tokens is missing or not a list of strings")
    if not isinstance(merges, list) or len(types) != len(tokens):
        raise CheckpointError("GGUF tokenizer.ggml.merges is missing or token_type has the "
                              "wrong length")
    for key in ("eos_token_id", "bos_token_id", "padding_token_id"):
        value = meta.get(key)
        if value is not None and not (isinstance(value, int) and 0 <= value < len(tokens)):
            raise CheckpointError(f"GGUF tokenizer.ggml.{key}={value!r} is not a token id")
    if meta.get("eos_token_id") is None:
        raise CheckpointError("GGUF tokenizer.ggml.eos_token_id is missing")
    return {**meta, "token_type": list(types)}


def _gguf_backend(meta: dict[str, Any]) -> tokenizers.Tokenizer:
    """The tokenizers pipeline transformers builds for Qwen2: byte-level BPE after a regex split."""
    tokens = meta["tokens"]
    vocab: dict[str, int] = {}
    for i, token in enumerate(tokens):
        vocab.setdefault(token, i)
    pairs = [tuple(m.split(" ")) for m in meta["merges"]]
    if any(len(p) != 2 for p in pairs):
        raise CheckpointError("GGUF tokenizer.ggml.merges holds an entry that is not 'a b'")
    backend = tokenizers.Tokenizer(models.BPE(vocab, pairs, fuse_unk=False, byte_fallback=False))
    backend.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(GGUF_PRE_PATTERNS[meta["pre"]]), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    backend.decoder = decoders.ByteLevel()
    kinds = list(zip(tokens, meta["token_type"]))
    backend.add_special_tokens([AddedToken(t, special=True, normalized=False)
                                for t, kind in kinds if kind == TOKEN_TYPE_CONTROL])
    backend.add_tokens([AddedToken(t, special=False, normalized=False)
                        for t, kind in kinds if kind == TOKEN_TYPE_USER_DEFINED])
    return backend


# -- tokenizer.json directories -------------------------------------------------------------------
def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{path}: not readable JSON: {e}") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: expected a JSON object")
    return data


def _token_string(value: Any) -> str | None:
    """tokenizer_config.json spells tokens as strings or as {"content": ...} objects."""
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) else None


def _templates_of(directory: Path, config: dict[str, Any]) -> dict[str, str]:
    """Named chat templates: chat_template.jinja wins over tokenizer_config.json's entry, which
    is a string or a list of {"name", "template"}."""
    found = config.get("chat_template")
    if isinstance(found, list):
        templates = {t["name"]: t["template"] for t in found
                     if isinstance(t, dict) and isinstance(t.get("name"), str)
                     and isinstance(t.get("template"), str)}
    else:
        templates = {"default": found} if isinstance(found, str) else {}
    jinja = directory / "chat_template.jinja"
    if jinja.is_file():
        templates["default"] = jinja.read_text(encoding="utf-8")
    return templates


# -- the tokenizer --------------------------------------------------------------------------------
class Tokenizer:
    """A `tokenizers.Tokenizer` plus what serving needs: special ids, stop ids, chat prompts."""

    def __init__(self, backend: tokenizers.Tokenizer, *, eos_token: str,
                 bos_token: str | None = None, pad_token: str | None = None,
                 chat_templates: Mapping[str, str] | None = None) -> None:
        self._backend = backend
        self._plain_backend: tokenizers.Tokenizer | None = None
        self._lock = threading.Lock()
        self._byte_tables: dict[bool, list[bytes] | None] = {}
        self._max_token_chars: int | None = None
        self._can_cut: bool | None = None
        self.vocab_size: int = backend.get_vocab_size(with_added_tokens=True)
        self.eos_token, self.bos_token, self.pad_token = eos_token, bos_token, pad_token
        eos_id = backend.token_to_id(eos_token)
        if eos_id is None:
            raise CheckpointError(f"the end-of-sequence token {eos_token!r} is not in the vocabulary")
        self.eos_token_id: int = eos_id
        self.bos_token_id = backend.token_to_id(bos_token) if bos_token else None
        self.pad_token_id = backend.token_to_id(pad_token) if pad_token else None
        stops = [eos_id] + [backend.token_to_id(t) for t in _STOP_TOKENS]
        self.eos_token_ids: tuple[int, ...] = tuple(dict.fromkeys(i for i in stops if i is not None))
        added = backend.get_added_tokens_decoder()
        self._special = {tok.content: i for i, tok in added.items() if tok.special}
        # longest first: a token wins over any token it contains, as in the tokenizer's own matcher
        alternatives = sorted(self._special, key=len, reverse=True)
        self._special_re = re.compile("(" + "|".join(map(re.escape, alternatives)) + ")") \
            if alternatives else None
        self.chat_templates = dict(chat_templates or {})
        self.chat_template_time_limit = DEFAULT_TIME_LIMIT
        self.chat_template_max_chars = DEFAULT_MAX_OUTPUT_CHARS

    # construction
    @classmethod
    def from_dir(cls, path: str | os.PathLike) -> Tokenizer:
        """From a Hugging Face directory: tokenizer.json, tokenizer_config.json, and the chat
        template from chat_template.jinja or tokenizer_config.json."""
        directory = Path(path)
        if not (directory / "tokenizer.json").is_file():
            raise CheckpointError(f"{directory}: no tokenizer.json")
        try:
            backend = tokenizers.Tokenizer.from_file(str(directory / "tokenizer.json"))
        except Exception as e:  # noqa: BLE001 - the Rust parser raises plain Exception
            raise CheckpointError(f"{directory / 'tokenizer.json'}: {e}") from None
        config = _read_json(directory / "tokenizer_config.json")
        eos = _token_string(config.get("eos_token"))
        if eos is None:  # Qwen2 base checkpoints: a document ends with <|endoftext|>
            eos = next((t for t in _STOP_TOKENS if backend.token_to_id(t) is not None), None)
            if eos is None:
                raise CheckpointError(f"{directory}: tokenizer_config.json names no eos_token")
        return cls(backend, eos_token=eos, bos_token=_token_string(config.get("bos_token")),
                   pad_token=_token_string(config.get("pad_token")),
                   chat_templates=_templates_of(directory, config))

    @classmethod
    def from_gguf(cls, source: str | os.PathLike | Mapping[str, Any]) -> Tokenizer:
        """From a GGUF file, or from its metadata already read (keys with or without the
        'tokenizer.ggml.' prefix)."""
        raw = source if isinstance(source, Mapping) else read_gguf_tokenizer_metadata(source)
        meta = _checked_metadata(raw)
        backend = _gguf_backend(meta)
        tokens = meta["tokens"]

        def name(key: str) -> str | None:
            return tokens[meta[key]] if meta.get(key) is not None else None

        template = meta.get("chat_template")
        return cls(backend, eos_token=tokens[meta["eos_token_id"]], bos_token=name("bos_token_id"),
                   pad_token=name("padding_token_id"),
                   chat_templates={"default": template} if isinstance(template, str) else None)

    def save(self, directory: str | os.PathLike) -> Path:
        """Write tokenizer.json and tokenizer_config.json (special tokens, chat templates):
        what from_dir reads back. Returns the directory."""
        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        self._backend.save(str(out / "tokenizer.json"))
        templates = [{"name": k, "template": v} for k, v in self.chat_templates.items()]
        config = {"eos_token": self.eos_token, "bos_token": self.bos_token,
                  "pad_token": self.pad_token,
                  "chat_template": self.chat_template
                  if list(self.chat_templates) == ["default"] else templates or None}
        (out / "tokenizer_config.json").write_text(json.dumps(config), encoding="utf-8")
        return out

    # tokens
    @property
    def chat_template(self) -> str | None:
        return self.chat_templates.get("default")

    @property
    def backend(self) -> tokenizers.Tokenizer:
        return self._backend

    def id_to_token(self, i: int) -> str | None:
        return self._backend.id_to_token(int(i))

    def token_to_id(self, s: str) -> int | None:
        return self._backend.token_to_id(s)

    def special_token_ids(self) -> set[int]:
        return set(self._special.values())

    def encode(self, text: str, *, allow_special: bool = False,
               max_tokens: int | None = None) -> list[int]:
        """Token ids of `text`. Special-token strings in it are plain text unless allow_special
        (which prompts written by the operator, not by users, may set).

        With max_tokens, a text of more tokens raises TooManyTokens without being encoded in
        full: at once when it has more characters than max_tokens of the longest token spell,
        else as soon as the pieces encoded so far pass the limit. Long texts are encoded
        outside the GIL (encode_batch releases it, encode does not), so a server thread doing
        this never stalls the event loop."""
        backend = self._backend if allow_special else self._plain()
        if max_tokens is not None and len(text) > max_tokens * self.max_token_chars:
            raise TooManyTokens(max_tokens)
        if len(text) <= PIECE_CHARS:
            ids = backend.encode(text, add_special_tokens=False).ids
        else:
            ids = []
            for piece in self._pieces(text):
                ids += backend.encode_batch([piece], add_special_tokens=False)[0].ids
                if max_tokens is not None and len(ids) > max_tokens:
                    break
        if max_tokens is not None and len(ids) > max_tokens:
            raise TooManyTokens(max_tokens)
        return ids

    @property
    def max_token_chars(self) -> int:
        """The most characters one token can stand for (its bytes bound them)."""
        if self._max_token_chars is None:
            table = self.token_bytes(False)
            self._max_token_chars = max(map(len, table)) if table else 1 << 30
        return self._max_token_chars

    def _pieces(self, text: str) -> Iterator[str]:
        """text in pieces of about PIECE_CHARS, cut where the pre-tokenizer always cuts; one
        piece when this tokenizer is not one where that is known to hold."""
        if not self._cuttable():
            yield text
            return
        start = 0
        while len(text) - start > PIECE_CHARS:
            cut = _CUT.search(text, start + PIECE_CHARS)
            if cut is None:
                break
            yield text[start:cut.start()]
            start = cut.start()
        yield text[start:]

    def _cuttable(self) -> bool:
        """Whether ids add up over pieces cut at `_CUT`: Qwen2's split (no lookbehind, and
        every alternative that holds a non-space stops before a space), NFC or no normalizer,
        and no added token that holds or strips a space."""
        if self._can_cut is None:
            pre = json.loads(self._backend.pre_tokenizer.__getstate__()) \
                if self._backend.pre_tokenizer is not None else {}
            steps = pre.get("pretokenizers", [pre])
            split = [p for p in steps if p.get("type") == "Split"]
            norm = self._backend.normalizer
            added = self._backend.get_added_tokens_decoder().values()
            self._can_cut = (
                len(split) == 1 and split[0].get("pattern") == {"Regex": QWEN2_SPLIT_PATTERN}
                and split[0].get("behavior") == "Isolated" and not split[0].get("invert")
                and all(p.get("type") in ("Split", "ByteLevel") and not p.get("use_regex")
                        for p in steps)
                and (norm is None or json.loads(norm.__getstate__()).get("type") == "NFC")
                and not any(" " in t.content or t.lstrip or t.rstrip or t.single_word
                            for t in added))
        return self._can_cut

    def decode(self, ids: Iterable[int], skip_special_tokens: bool = False) -> str:
        ids = ids.tolist() if hasattr(ids, "tolist") else ids
        return self._backend.decode([int(i) for i in ids], skip_special_tokens=skip_special_tokens)

    def _plain(self) -> tokenizers.Tokenizer:
        """A twin of the backend that reads special-token strings as text. A second instance,
        not a toggled flag, so concurrent encodes never see each other's mode."""
        with self._lock:
            if self._plain_backend is None:
                twin = tokenizers.Tokenizer.from_str(self._backend.to_str())
                twin.encode_special_tokens = True
                self._plain_backend = twin
            return self._plain_backend

    def token_bytes(self, skip_special_tokens: bool) -> list[bytes] | None:
        """The bytes each id decodes to (b'' for skipped ids), for byte-level tokenizers; None
        for others. Built once: ~0.2 s for a 152k vocabulary."""
        if skip_special_tokens not in self._byte_tables:
            self._byte_tables[skip_special_tokens] = _byte_table(
                self._backend, self.special_token_ids() if skip_special_tokens else set())
        return self._byte_tables[skip_special_tokens]

    # chat
    def _template_for(self, tools: Any) -> ChatTemplate:
        source = self.chat_templates.get("tool_use") if tools else None
        source = source or self.chat_template
        if source is None:
            raise TemplateError("this model has no chat template; send a plain prompt instead")
        return get_chat_template(source, self.chat_template_time_limit,
                                 self.chat_template_max_chars)

    def _chat_variables(self, messages: Any, tools: Any, default_system: str | None,
                        template_kwargs: dict[str, Any]) -> tuple[dict, dict]:
        """(variables from the caller, variables from this tokenizer) for a render."""
        given = plain_data(template_kwargs)
        given.update(messages=prepare_messages(messages, default_system), tools=plain_data(tools),
                     documents=plain_data(given.get("documents")))
        own = {k: v for k, v in (("bos_token", self.bos_token), ("eos_token", self.eos_token),
                                 ("pad_token", self.pad_token)) if v is not None}
        return given, own

    def apply_chat_template(self, messages: Any, *, add_generation_prompt: bool = True,
                            tools: list | None = None, default_system: str | None = None,
                            continue_final_message: bool = False,
                            **template_kwargs: Any) -> str:
        """The prompt text (render only). Tokenize it with encode_chat, not encode.
        continue_final_message: the prompt ends inside the last (assistant) message, so the
        model goes on with its text (prefill)."""
        given, own = self._chat_variables(messages, tools, default_system, template_kwargs)
        given, add_generation_prompt, final = _continuation(given, add_generation_prompt,
                                                            continue_final_message)
        text = self._template_for(tools).render(**{**own, **given},
                                                add_generation_prompt=add_generation_prompt)
        return _cut_after(text, final) if final else text

    def encode_chat(self, messages: Any, *, add_generation_prompt: bool = True,
                    tools: list | None = None, default_system: str | None = None,
                    continue_final_message: bool = False, max_tokens: int | None = None,
                    **template_kwargs: Any) -> list[int]:
        """Prompt ids where control tokens come only from the template itself: a special-token
        string inside any message, tool or argument is tokenized as the text it is.

        How: every special-token string in the caller's data is swapped for a private-use
        character found nowhere in the data or the template, the template renders, the text is
        cut at the special tokens (all of them now the template's own), and each piece between
        gets its swapped strings back and is encoded with special tokens off. For data with no
        special-token strings this equals encode(apply_chat_template(...), allow_special=True).
        max_tokens: as in encode, for the whole prompt.
        """
        given, own = self._chat_variables(messages, tools, default_system, template_kwargs)
        given, add_generation_prompt, final = _continuation(given, add_generation_prompt,
                                                            continue_final_message)
        template = self._template_for(tools)
        if self._special_re is None:
            text = template.render(**{**own, **given}, add_generation_prompt=add_generation_prompt)
            return self.encode(_cut_after(text, final) if final else text, max_tokens=max_tokens)
        swap = _Swap(self._special_re, self._special, _strings(given, template.source))
        text = template.render(**{**own, **swap.hide(given)},
                               add_generation_prompt=add_generation_prompt)
        if final:
            text = _cut_after(text, swap.hide(final))
        if max_tokens is not None and len(text) > max_tokens * self.max_token_chars:
            raise TooManyTokens(max_tokens)
        ids: list[int] = []
        for i, piece in enumerate(self._special_re.split(text)):
            if i % 2:  # the split's captured separators: the template's special tokens
                ids.append(self._special[piece])
            elif piece:
                room = None if max_tokens is None else max(0, max_tokens - len(ids))
                ids.extend(self.encode(swap.restore(piece), max_tokens=room))
            if max_tokens is not None and len(ids) > max_tokens:
                raise TooManyTokens(max_tokens)
        return ids


def _continuation(given: dict[str, Any], add_generation_prompt: bool,
                  continue_final: bool) -> tuple[dict[str, Any], bool, str | None]:
    """(template variables, add_generation_prompt, text to end the prompt after) for a render
    that continues the last message. An empty last message is the same as a generation prompt."""
    if not continue_final:
        return given, add_generation_prompt, None
    messages = given["messages"]
    last = messages[-1] if messages else {}
    if last.get("role") != "assistant":
        raise TemplateError("continue_final_message needs the last message to be the "
                            "assistant's")
    content = last.get("content")
    if not isinstance(content, str):
        raise TemplateError("continue_final_message needs the last message's content to be text")
    if not content:
        return {**given, "messages": messages[:-1]}, True, None
    return given, False, content


def _cut_after(text: str, final: str) -> str:
    """The rendered prompt cut right after the last message's text (templates may strip it)."""
    for probe in (final, final.strip()):
        at = text.rfind(probe) if probe else -1
        if at >= 0:
            return text[:at + len(probe)]
    raise TemplateError("the chat template does not reproduce the last assistant message's "
                        "text, so the answer cannot continue it")


def _strings(*values: Any) -> Iterator[str]:
    """Every string in nested dicts and lists, keys included."""
    stack = list(values)
    while stack:
        v = stack.pop()
        if isinstance(v, str):
            yield v
        elif isinstance(v, dict):
            stack.extend(v.keys())
            stack.extend(v.values())
        elif isinstance(v, (list, tuple)):
            stack.extend(v)


class _Swap:
    """Special-token strings <-> private-use characters that occur nowhere else."""

    def __init__(self, pattern: re.Pattern, specials: Mapping[str, int], in_use: Iterable[str]):
        used = set().union(*map(set, in_use))
        private = itertools.chain(range(0xF_0000, 0xF_FFFE), range(0x10_0000, 0x10_FFFE))
        free = [chr(c) for c in itertools.islice((c for c in private if chr(c) not in used),
                                                  len(specials))]
        if len(free) < len(specials):  # the data spells 131,000 private-use characters
            raise TemplateError("the conversation uses every private-use character; it cannot "
                                "be encoded safely")
        self._pattern = pattern
        self._hide = dict(zip(specials, free))
        back = {mark: token for token, mark in self._hide.items()}
        # json.dumps(ensure_ascii=True) in a template spells a mark as a surrogate-pair escape
        back.update({json.dumps(mark)[1:-1]: token for mark, token in list(back.items())})
        self._back = back
        self._back_re = re.compile("|".join(map(re.escape, back)))

    def hide(self, value: Any) -> Any:
        if isinstance(value, str):
            return self._pattern.sub(lambda m: self._hide[m.group(0)], value)
        if isinstance(value, dict):
            return {self.hide(k): self.hide(v) for k, v in value.items()}
        if isinstance(value, list):
            return [self.hide(v) for v in value]
        return value

    def restore(self, text: str) -> str:
        return self._back_re.sub(lambda m: self._back[m.group(0)], text)


# -- detokenizing ---------------------------------------------------------------------------------
def _unicode_to_byte() -> dict[str, int]:
    """Byte-level BPE spells each byte as one printable character: printable Latin-1 bytes as
    themselves, the other 68 bytes as U+0100 onwards, in byte order."""
    keep = [*range(0x21, 0x7F), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    table = {chr(b): b for b in keep}
    shifted = (b for b in range(256) if b not in table.values())
    table.update({chr(0x100 + n): b for n, b in enumerate(shifted)})
    return table


def _byte_table(backend: tokenizers.Tokenizer, skipped: set[int]) -> list[bytes] | None:
    """Bytes of every id, decoded the way tokenizers' ByteLevel decoder does: a token whose
    characters are all byte characters maps through them, any other as its own UTF-8."""
    if not isinstance(backend.decoder, decoders.ByteLevel):
        return None
    to_byte = _unicode_to_byte()
    size = max(backend.get_vocab(with_added_tokens=True).values()) + 1
    table = []
    for i in range(size):
        token = backend.id_to_token(i)
        if token is None or i in skipped:
            table.append(b"")
        elif all(c in to_byte for c in token):
            table.append(bytes(to_byte[c] for c in token))
        else:
            table.append(token.encode("utf-8"))
    return table


class IncrementalDetokenizer:
    """Turns generated ids into text deltas. A character split across tokens (CJK, emoji in
    byte-fallback pieces) is held until its last byte arrives, so no delta shows a U+FFFD that
    the full text would not have; the deltas plus flush() equal decode(all ids)."""

    def __init__(self, tokenizer: Tokenizer, prompt_ids: list[int] | None = None,
                 skip_special_tokens: bool = True) -> None:
        # prompt_ids: accepted for decoders that need left context; byte-level BPE needs none,
        # and decoding generated ids alone is exactly what decode(generated ids) returns
        self.tokenizer = tokenizer
        self.skip_special_tokens = skip_special_tokens
        self.prompt_ids = prompt_ids
        self.ids: list[int] = []
        self.text = ""
        self._bytes = tokenizer.token_bytes(skip_special_tokens)
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def add(self, token_id: int) -> str:
        """The text this token completes ('' while a character is still partial)."""
        token_id = int(token_id)
        self.ids.append(token_id)
        if self._bytes is not None:
            chunk = self._bytes[token_id] if 0 <= token_id < len(self._bytes) else b""
            return self._emit(self._utf8.decode(chunk))
        # other decoders: decode everything so far, hold back a trailing replacement character
        full = self.tokenizer.decode(self.ids, self.skip_special_tokens)
        return self._emit(full[len(self.text):len(full.rstrip("\ufffd"))])

    def flush(self) -> str:
        """What is still held back: a character whose bytes never completed becomes U+FFFD."""
        if self._bytes is not None:
            return self._emit(self._utf8.decode(b"", final=True))
        return self._emit(self.tokenizer.decode(self.ids, self.skip_special_tokens)[len(self.text):])

    def _emit(self, delta: str) -> str:
        self.text += delta
        return delta
