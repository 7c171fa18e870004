"""Engine outputs in the OpenAI response shapes: the envelope of an answer, finish reasons
and logprobs."""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from typing import Any, ClassVar, NamedTuple

from qwq.outputs import CompletionOutput
from qwq.server.protocol import SamplingFields
from qwq.server.state import ServerState

# the engine's reasons (reasoning controls add their own, e.g. "loop") in OpenAI's vocabulary
_FINISH = {"stop": "stop", "length": "length", "tool_calls": "tool_calls",
           "content_filter": "content_filter", "abort": "abort"}


class Objects(NamedTuple):
    """How an OpenAI route names its answers: the request id's prefix, and the object of a whole
    body and of a stream chunk."""

    id_prefix: str
    whole: str
    chunk: str


@dataclass(kw_only=True)
class OpenAIJob:
    """One chat or completions request being answered, and what its body and each of its
    chunks carry: id, object, created, model."""

    OBJECTS: ClassVar[Objects]
    state: ServerState
    body: SamplingFields
    model: str
    request_id: str = field(init=False)
    created: int = field(default_factory=lambda: int(time.time()))

    def __post_init__(self) -> None:
        self.request_id = f"{self.OBJECTS.id_prefix}-{uuid.uuid4().hex}"

    def whole(self, choices: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
        return self._envelope(self.OBJECTS.whole, choices, extra)

    def chunk(self, choices: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
        return self._envelope(self.OBJECTS.chunk, choices, extra)

    def _envelope(self, obj: str, choices: list[dict[str, Any]],
                  extra: dict[str, Any]) -> dict[str, Any]:
        return {"id": self.request_id, "object": obj, "created": self.created,
                "model": self.model, "choices": choices, **extra}


def finish_reason(o: CompletionOutput) -> str | None:
    if o.finish_reason is None:
        return None
    return _FINISH.get(o.finish_reason, "stop")


def stop_reason(o: CompletionOutput) -> str | int | None:
    """The stop string or token id that ended the choice, or the engine's own reason when it
    is not one of OpenAI's."""
    if isinstance(o.stop_reason, (str, int)):
        return o.stop_reason
    if o.finish_reason and o.finish_reason not in _FINISH:
        return o.finish_reason
    return None


def content_filter(o: CompletionOutput) -> dict[str, Any] | None:
    """Which guard blocked the choice, and where: {category, guard, stage}."""
    if o.finish_reason != "content_filter" or not isinstance(o.stop_reason, dict):
        return None
    return {k: o.stop_reason.get(k) for k in ("category", "guard", "stage")}


def ending(o: CompletionOutput) -> dict[str, Any]:
    """What a finished choice says about why it ended beyond finish_reason: the stop string
    or token (stop_reason), and for a blocked one which guard and category (content_filter)."""
    out: dict[str, Any] = {}
    if stop_reason(o) is not None:
        out["stop_reason"] = stop_reason(o)
    if content_filter(o) is not None:
        out["content_filter"] = content_filter(o)
    return out


def logprob_entries(o: CompletionOutput) -> list[dict[int, float]]:
    """The logprob entries as of this output. The engine keeps appending to the list an output
    holds, so a queued output is cut at its own token count."""
    return (o.logprobs or [])[:len(o.token_ids)]


def _chosen(entry: dict[int, float]) -> int:
    return next(iter(entry))  # the sampled token comes first, its alternatives after


def _top(entry: dict[int, float], n: int) -> list[tuple[int, float]]:
    return sorted(entry.items(), key=lambda kv: -kv[1])[:n]


def chat_logprobs(state: ServerState, entries: list[dict[int, float]],
                  top_n: int) -> dict[str, Any]:
    """{"content": [{token, logprob, bytes, top_logprobs}]} for these sampled tokens."""
    content = []
    for entry in entries:
        token = _chosen(entry)
        text, raw = state.token_text(token)
        top = []
        for alt, value in _top(entry, top_n):
            alt_text, alt_raw = state.token_text(alt)
            top.append({"token": alt_text, "logprob": value, "bytes": alt_raw})
        content.append({"token": text, "logprob": entry[token], "bytes": raw,
                        "top_logprobs": top})
    return {"content": content}


def completion_logprobs(state: ServerState, entries: list[dict[int, float]], top_n: int,
                        offset: int = 0, echo_ids: list[int] | None = None,
                        echo_logprobs: list[dict[int, float] | None] | None = None,
                        ) -> dict[str, Any]:
    """The legacy completions shape: tokens, token_logprobs, top_logprobs, text_offset.
    Echoed prompt tokens carry the engine's prompt logprobs (the first one has none)."""
    out: dict[str, list] = {"tokens": [], "token_logprobs": [], "top_logprobs": [],
                            "text_offset": []}
    for i, token in enumerate(echo_ids or []):
        text, _ = state.token_text(token)
        entry = echo_logprobs[i] if echo_logprobs and i < len(echo_logprobs) else None
        out["tokens"].append(text)
        out["token_logprobs"].append(entry[token] if entry else None)
        out["top_logprobs"].append({state.token_text(t)[0]: v for t, v in _top(entry, top_n)}
                                   if entry and top_n else None)
        out["text_offset"].append(offset)
        offset += len(text)
    for entry in entries:
        token = _chosen(entry)
        text, _ = state.token_text(token)
        out["tokens"].append(text)
        out["token_logprobs"].append(entry[token])
        out["top_logprobs"].append({state.token_text(t)[0]: v for t, v in _top(entry, top_n)}
                                   if top_n else None)
        out["text_offset"].append(offset)
        offset += len(text)
    return out
