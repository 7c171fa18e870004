"""Streamers for `generate(streamer=...)`, with transformers' interface (put / end), so the
model card's code runs without transformers installed; transformers' own streamers work too.

    streamer = TextStreamer(tokenizer, skip_prompt=True)
    model.generate(**inputs, max_new_tokens=64, streamer=streamer)   # prints as it goes

    streamer = TextIteratorStreamer(tokenizer, skip_prompt=True)
    Thread(target=model.generate, kwargs=dict(inputs, streamer=streamer)).start()
    for text in streamer: ...
"""

from __future__ import annotations

import unicodedata
from queue import Queue
from typing import Any


class TextStreamer:
    """Prints text as tokens arrive. generate() puts the prompt ids first, then each new token,
    then calls end(). Text is held back while it may still change: an unfinished UTF-8
    character, or a word that the next token may extend past a symbol."""

    def __init__(self, tokenizer: Any, skip_prompt: bool = False, **decode_kwargs: Any):
        self.tokenizer = tokenizer
        self.skip_prompt = skip_prompt
        self.decode_kwargs = decode_kwargs
        self.token_cache: list[int] = []
        self.print_len = 0
        self.next_tokens_are_prompt = True

    def put(self, value: Any) -> None:
        if len(value.shape) > 1 and value.shape[0] > 1:
            raise ValueError("TextStreamer only supports batch size 1")
        ids = (value[0] if len(value.shape) > 1 else value).tolist()
        if self.skip_prompt and self.next_tokens_are_prompt:
            self.next_tokens_are_prompt = False
            return
        self.token_cache.extend(ids)
        text = self.tokenizer.decode(self.token_cache, **self.decode_kwargs)
        if text.endswith("\n"):  # a line is final: start afresh, keeping one token of context
            printable = text[self.print_len:]
            self.token_cache = self.token_cache[-1:]
            self.print_len = len(self.tokenizer.decode(self.token_cache, **self.decode_kwargs))
        else:
            printable = text[self.print_len:self._safe_end(text)]
            self.print_len += len(printable)
        self.on_finalized_text(printable)

    def _safe_end(self, text: str) -> int:
        """Where the printable text ends: all of it when it is letters, digits, spaces or
        CJK; else up to the last space (a symbol may start an unfinished character)."""
        rest = text[self.print_len:]
        if all(c.isspace() or unicodedata.category(c)[0] in "LMN" for c in rest):
            return len(text)
        return max(self.print_len, text.rfind(" ") + 1)

    def end(self) -> None:
        text = self.tokenizer.decode(self.token_cache, **self.decode_kwargs) \
            if self.token_cache else ""
        printable = text[self.print_len:]
        self.token_cache, self.print_len = [], 0
        self.next_tokens_are_prompt = True
        self.on_finalized_text(printable, stream_end=True)

    def on_finalized_text(self, text: str, stream_end: bool = False) -> None:
        print(text, flush=True, end="" if not stream_end else None)


class TextIteratorStreamer(TextStreamer):
    """The text as an iterator, for generate() running in another thread. timeout bounds each
    wait for the next piece (None: wait as long as it takes)."""

    def __init__(self, tokenizer: Any, skip_prompt: bool = False, timeout: float | None = None,
                 **decode_kwargs: Any):
        super().__init__(tokenizer, skip_prompt, **decode_kwargs)
        self.text_queue: Queue = Queue()
        self.stop_signal = None
        self.timeout = timeout

    def on_finalized_text(self, text: str, stream_end: bool = False) -> None:
        self.text_queue.put(text, timeout=self.timeout)
        if stream_end:
            self.text_queue.put(self.stop_signal, timeout=self.timeout)

    def __iter__(self) -> TextIteratorStreamer:
        return self

    def __next__(self) -> str:
        value = self.text_queue.get(timeout=self.timeout)
        if value is self.stop_signal:
            raise StopIteration()
        return value
