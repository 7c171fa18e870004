"""Shared by the reasoning tests: a tokenizer that splits like Qwen's BPE (one token per digit,
words with their leading space) and a driver that applies control actions like the engine."""

import re

from qwq.reasoning.actions import Force, Stop

_PIECE = re.compile(r"<\|[a-z_]+\|>|</?think>|\d| ?[^\W\d_]+|\n+| +|[^\w\s]|_")


class FakeTokenizer:
    chat_template = None
    eos_token_ids = (0,)

    def __init__(self):
        self.pieces = ["<|endoftext|>"]
        self.ids = {"<|endoftext|>": 0}

    @property
    def vocab_size(self) -> int:
        return len(self.pieces)

    def encode(self, text: str, allow_special: bool = False) -> list[int]:
        out = []
        for piece in _PIECE.findall(text):
            if piece not in self.ids:
                self.ids[piece] = len(self.pieces)
                self.pieces.append(piece)
            out.append(self.ids[piece])
        return out

    def decode(self, ids, skip_special_tokens: bool = False) -> str:
        return "".join(self.pieces[i] for i in ids)


def drive(controls, tokenizer, model_ids, max_tokens=10_000):
    """Feed the scripted model's tokens one at a time; Force appends tokens (the script then
    goes on), Stop ends. Returns (output ids, text, finish reason, list of actions)."""
    out, text, actions = [], "", []
    for token in model_ids:
        out.append(token)
        text += tokenizer.decode([token])
        if len(out) >= max_tokens:
            return out, text, "length", actions
        for control in controls:
            action = control.on_token(token, text, out)
            if isinstance(action, Stop):
                actions.append(action)
                return out, text, action.finish_reason, actions
            if isinstance(action, Force):
                actions.append(action)
                room = max_tokens - len(out)
                out.extend(action.token_ids[:room])
                text += tokenizer.decode(action.token_ids[:room])
                break
    return out, text, "stop", actions
