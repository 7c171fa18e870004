"""The one path the other APIs (Anthropic's, OpenAI's Responses, Ollama's) take into the engine.

Each of them translates its request into a ChatCompletionRequest, which runs exactly as POST
/v1/chat/completions runs it (chat.prepare: template, sampling, grammar, reasoning controls), or
into prompt ids and SamplingParams for raw prompts. The answer comes back as Pieces (reasoning,
text, tool calls, the end) that each API renders in its own shape, streamed or whole.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import aclosing
from dataclasses import dataclass, field
from typing import Any, TypeVar

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from pydantic import BaseModel, ValidationError

from qwq.engine.async_engine import EngineDeadError
from qwq.outputs import CompletionOutput
from qwq.reasoning.parser import ReasoningStreamer
from qwq.sampling_params import SamplingParams
from qwq.server import chat
from qwq.server.errors import APIError, from_exception, validation_error
from qwq.server.metrics import RequestTrack
from qwq.server.protocol import ChatCompletionRequest
from qwq.server.render import stop_reason
from qwq.server.state import ServerState, state_of, tenant_of
from qwq.server.streaming import ClientGone, Stream, start_tracked, watch
from qwq.server.tools import ToolCallStream

M = TypeVar("M", bound=BaseModel)
# fields of the OpenAI chat body that other APIs' bodies may carry as extras: qwq's reasoning
# controls and vLLM's sampling extras, under the same names everywhere
PASSTHROUGH = ("max_thinking_tokens", "reasoning_effort", "loop_control", "language", "guard",
               "conclude", "min_p", "repetition_penalty", "presence_penalty",
               "frequency_penalty", "seed", "min_tokens", "cache_salt",
               "chat_template_kwargs")


def validated(model: type[M], data: dict[str, Any]) -> M:
    """A translated body, validated; a bad value is a 400 naming it."""
    try:
        return model.model_validate(data)
    except ValidationError as e:
        raise validation_error(RequestValidationError(e.errors())) from None


def passthrough(extras: dict[str, Any] | None) -> dict[str, Any]:
    return {k: v for k, v in (extras or {}).items() if k in PASSTHROUGH}


def chat_request(data: dict[str, Any], extras: dict[str, Any] | None = None
                 ) -> ChatCompletionRequest:
    """A validated chat request from a translated body and the extras it carried."""
    return validated(ChatCompletionRequest, {**passthrough(extras), **data})


@dataclass
class Piece:
    """What one engine output adds to an answer."""

    reasoning: str = ""
    text: str = ""
    tool_calls: list[dict[str, Any]] = field(default_factory=list)  # OpenAI's tool_calls
    finish_reason: str | None = None  # OpenAI's vocabulary; set on the last piece
    stop_reason: str | int | None = None  # the stop string or token that ended it
    reasoning_tokens: int = 0  # tokens of this output spent while reasoning


@dataclass
class Answer:
    """A whole answer: the pieces joined."""

    reasoning: str = ""
    text: str = ""
    tool_calls: list[dict[str, Any]] = field(default_factory=list)
    finish_reason: str | None = None
    stop_reason: str | int | None = None
    reasoning_tokens: int = 0

    def add(self, p: Piece) -> None:
        self.reasoning += p.reasoning
        self.text += p.text
        self.tool_calls += p.tool_calls
        self.finish_reason = p.finish_reason or self.finish_reason
        self.stop_reason = p.stop_reason if p.finish_reason else self.stop_reason
        self.reasoning_tokens += p.reasoning_tokens


class Splitter:
    """Splits one choice's text deltas into reasoning, content and tool calls, as the chat
    route does: reasoning before the end-of-reasoning marker, tool-call blocks held back and
    parsed when the choice ends."""

    def __init__(self, reasoning_style: str | None, tools: bool):
        self.reasoning = ReasoningStreamer(reasoning_style, in_reasoning=True, tools=tools) \
            if reasoning_style else None
        self.tools = ToolCallStream() if tools else None

    def feed(self, o: CompletionOutput) -> Piece:
        thinking = self.reasoning is not None and not self.reasoning.reasoning_ended
        finishing = o.finish_reason is not None
        reasoning, text = chat.split_delta(self.reasoning, o.delta_text, finishing)
        text, _ = chat.tool_deltas(self.tools, text, finishing)
        piece = Piece(reasoning, text,
                      reasoning_tokens=len(o.delta_token_ids) if thinking else 0)
        if finishing:
            piece.tool_calls = list(self.tools.calls) if self.tools else []
            piece.finish_reason = chat.finish_of(o, bool(piece.tool_calls))
            piece.stop_reason = stop_reason(o)
        return piece


class Run:
    """One started engine request (n=1) of another API; read it with pieces() or answer()."""

    def __init__(self, state: ServerState, stream: Stream, track: RequestTrack,
                 splitter: Splitter, model: str):
        self.state = state
        self.stream = stream
        self.track = track
        self.splitter = splitter
        self.model = model

    @classmethod
    async def chat(cls, request: Request, body: ChatCompletionRequest,
                   endpoint: str) -> Run | Response:
        """Start body as the chat route would; a Response (499) when the client has left."""
        state = state_of(request)
        model = state.model_name(body.model)
        state.check_open()
        job = await chat.prepare(state, body, model, tenant_of(request))
        splitter = Splitter(job.reasoning_style, bool(job.tools))
        return await cls._start(request, job.ids, job.params, endpoint, splitter, model)

    @classmethod
    async def prompt(cls, request: Request, ids: list[int], params: SamplingParams,
                     endpoint: str, model: str) -> Run | Response:
        """Start a raw prompt (no template, no reasoning split)."""
        return await cls._start(request, ids, params, endpoint, Splitter(None, False), model)

    @classmethod
    async def _start(cls, request: Request, ids: list[int], params: SamplingParams,
                     endpoint: str, splitter: Splitter, model: str) -> Run | Response:
        state = state_of(request)
        track = state.metrics.track(endpoint)
        stream = Stream(state, ids, params, f"{endpoint}-{uuid.uuid4().hex}", track)
        refused = await start_tracked([stream], request, track)
        return refused if refused is not None else cls(state, stream, track, splitter, model)

    def usage(self) -> tuple[int, int, int]:
        """(prompt, completion, cached prompt) tokens so far."""
        return self.stream.usage_counts()

    async def pieces(self) -> AsyncIterator[Piece]:
        """The answer as it comes. A failed generation or a dead engine raises APIError; the
        request is closed and its outcome counted however the reading ends."""
        outcome = "disconnected"
        try:
            async for out in self.stream.outputs():
                o = out.outputs[0]
                if o.finish_reason == "error":
                    outcome = "error"
                    raise APIError(500, o.error or "generation failed", code="generation_failed")
                yield self.splitter.feed(o)
            outcome = "ok"
        except EngineDeadError as e:
            outcome = "error"
            raise from_exception(e) from None
        finally:
            self.track.finish(outcome, *self.usage()[:2])
            await self.stream.close()

    async def answer(self, request: Request) -> Answer | Response:
        """The whole answer; a Response (499) when the client hangs up first."""
        async def collect() -> Answer:
            answer = Answer()
            async with aclosing(self.pieces()) as pieces:
                async for piece in pieces:
                    answer.add(piece)
            return answer

        try:
            return await watch(collect(), request)
        except ClientGone:
            return Response(status_code=499)
