"""Running engine requests for HTTP clients: wait for outputs while watching for a client that
hangs up (its request is aborted, its KV blocks freed), and server-sent events; the answer of
OpenAI's chat and completions routes, whole or streamed, over one or more engine requests."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import suppress
from typing import Any, TypeVar

import anyio
from fastapi import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from qwq.engine.async_engine import EngineDeadError
from qwq.errors import QwQError
from qwq.outputs import CompletionOutput, RequestOutput
from qwq.sampling_params import SamplingParams
from qwq.server.errors import APIError, error_body, from_exception
from qwq.server.metrics import RequestTrack
from qwq.server.render import OpenAIJob
from qwq.server.state import ServerState

T = TypeVar("T")
DISCONNECT_POLL_S = 0.25
DONE = b"data: [DONE]\n\n"


class ClientGone(Exception):
    """The client closed the connection before its answer was ready."""


def sse(data: Any) -> bytes:
    return b"data: " + json.dumps(data, ensure_ascii=False, separators=(",", ":")).encode() \
        + b"\n\n"


def failed_event(o: CompletionOutput) -> bytes | None:
    """The SSE event that ends a stream whose choice failed in the engine (NaN logits, ...);
    None for a choice that did not."""
    if o.finish_reason != "error":
        return None
    return sse(error_body(500, o.error or "generation failed", code="generation_failed"))


async def watch(awaitable: Awaitable[T], request: Request) -> T:
    """Await while polling for a disconnect; on one, cancel (which aborts the request)."""
    task = asyncio.ensure_future(awaitable)
    try:
        while True:
            done, _ = await asyncio.wait({task}, timeout=DISCONNECT_POLL_S)
            if done:
                return task.result()
            if await request.is_disconnected():
                raise ClientGone()
    finally:
        if not task.done():
            task.cancel()
            with suppress(asyncio.CancelledError, Exception):
                await task


class Stream:
    """One engine request: its async generator and the first output, which arrives before any
    HTTP answer is sent, so a refused request still gets its proper status code."""

    def __init__(self, state: ServerState, prompt: list[int], params: SamplingParams,
                 request_id: str, track: RequestTrack | None = None):
        self.gen = state.aeng.generate(prompt, params, request_id)
        self.track = track
        self.first: RequestOutput | None = None
        self.last: RequestOutput | None = None

    async def start(self) -> RequestOutput:
        try:
            self.first = self.last = await self.gen.__anext__()
        except (QwQError, EngineDeadError) as e:  # refused: bad request, full queue, dead
            raise from_exception(e) from None
        self._timed(self.first)
        return self.first

    def _timed(self, out: RequestOutput) -> None:
        if self.track is None:
            return
        if any(o.delta_token_ids for o in out.outputs):
            self.track.on_tokens()
        if out.finished:
            self.track.on_drafts(out.metrics.get("draft_tokens", 0),
                                 out.metrics.get("accepted_draft_tokens", 0))

    async def outputs(self) -> AsyncIterator[RequestOutput]:
        """The first output, then the rest as they come."""
        if self.first is not None:
            yield self.first
            if self.first.finished:
                return
        async for out in self.gen:
            self.last = out
            self._timed(out)
            yield out

    def usage_counts(self) -> tuple[int, int, int]:
        """(prompt, completion, cached prompt) tokens so far."""
        out = self.last
        if out is None:
            return 0, 0, 0
        return (len(out.prompt_token_ids), sum(len(o.token_ids) for o in out.outputs),
                out.num_cached_tokens)

    async def final(self) -> RequestOutput:
        out = self.last
        async for out in self.outputs():
            pass
        return out

    async def close(self) -> None:
        with anyio.CancelScope(shield=True):
            await self.gen.aclose()


async def start_tracked(streams: list[Stream], request: Request,
                        track: RequestTrack) -> Response | None:
    """start_all, with the outcome in metrics: a 499 response when the client left before
    the first output, None once every stream has started; HTTP errors propagate."""
    try:
        await start_all(streams, request)
    except ClientGone:
        track.finish("disconnected")
        return Response(status_code=499)
    except APIError as e:
        track.finish(f"http_{e.status}")
        raise
    return None


async def start_all(streams: list[Stream], request: Request) -> None:
    """Start every stream (all are submitted at once); on any refusal close them all."""
    try:
        results = await watch(asyncio.gather(*(s.start() for s in streams),
                                             return_exceptions=True), request)
    except BaseException:
        for s in streams:
            await s.close()
        raise
    errors = [r for r in results if isinstance(r, BaseException)]
    if errors:
        for s in streams:
            await s.close()
        raise errors[0]


def usage_counts(streams: list[Stream]) -> tuple[int, int, int]:
    """(prompt, completion, cached prompt) tokens so far, over all the streams."""
    counts = [s.usage_counts() for s in streams]
    return tuple(sum(c[i] for c in counts) for i in range(3))  # type: ignore[return-value]


async def finals(streams: list[Stream], request: Request,
                 track: RequestTrack) -> list[RequestOutput] | Response:
    """Each started stream's last output, read while watching the client, with the outcome in
    metrics: a 499 response when the client hangs up first; a dead engine or a failed choice
    raises APIError. The streams are closed however it ends."""
    async def read() -> list[RequestOutput]:
        return [await s.final() for s in streams]

    try:
        outs = await watch(read(), request)
    except ClientGone:
        track.finish("disconnected", *usage_counts(streams)[:2])
        return Response(status_code=499)
    except EngineDeadError as e:
        track.finish("error")
        raise from_exception(e) from None
    finally:
        for s in streams:
            await s.close()
    prompt, completion, _ = usage_counts(streams)
    failed = next((o for out in outs for o in out.outputs if o.finish_reason == "error"), None)
    if failed is not None:
        track.finish("error", prompt, completion)
        raise APIError(500, failed.error or "generation failed", code="generation_failed")
    track.finish("ok", prompt, completion)
    return outs


ChunkChoice = Callable[[int, RequestOutput, CompletionOutput], dict[str, Any] | None]


async def respond(job: OpenAIJob, streams: list[Stream], request: Request, track: RequestTrack,
                  choice: ChunkChoice,
                  choices: Callable[[list[RequestOutput]], list[dict[str, Any]]]) -> Response:
    """Start the streams and answer an OpenAI chat or completions request: its events when the
    body asks for a stream (choice: what each output adds, see `events`), else its whole body
    (choices: from the streams' final outputs); a refusal or a client gone as `start_tracked`
    and `finals` say."""
    refused = await start_tracked(streams, request, track)
    if refused is not None:
        return refused
    if job.body.stream:
        return SSEResponse(events(job, streams, track, choice))
    outs = await finals(streams, request, track)
    if isinstance(outs, Response):
        return outs
    return JSONResponse(job.whole(choices(outs), usage=job.state.usage(*usage_counts(streams))))


async def events(job: OpenAIJob, streams: list[Stream], track: RequestTrack,
                 choice: ChunkChoice) -> AsyncIterator[bytes]:
    """An OpenAI answer's SSE events: the started streams one after another (all run in the
    engine at once), a chunk for each choice(k, out, o) of stream k's output o that is not
    None, then the usage when stream_options asks for it, then [DONE]. A failed choice or a dead
    engine ends the events with an error; the outcome goes into metrics and the streams are
    closed however they end."""
    outcome = "disconnected"
    try:
        for k, stream in enumerate(streams):
            async for out in stream.outputs():
                for o in out.outputs:
                    if (failed := failed_event(o)) is not None:
                        outcome = "error"
                        yield failed
                        return
                    if (c := choice(k, out, o)) is not None:
                        yield sse(job.chunk([c]))
        opts = job.body.stream_options
        if opts is not None and opts.include_usage:
            yield sse(job.chunk([], usage=job.state.usage(*usage_counts(streams))))
        outcome = "ok"
        yield DONE
    except EngineDeadError as e:  # the engine died mid-stream: say so, then close
        outcome = "error"
        yield sse(from_exception(e).body())
    finally:
        track.finish(outcome, *usage_counts(streams)[:2])
        for s in streams:
            await s.close()


class SSEResponse(StreamingResponse):
    """Server-sent events whose generator is always closed, even when the client's disconnect
    cancels the response while it waits to send."""

    media_type = "text/event-stream"

    def __init__(self, content: AsyncIterator[bytes]):
        super().__init__(content, headers={"Cache-Control": "no-cache",
                                           "X-Accel-Buffering": "no"})

    async def stream_response(self, send: Any) -> None:
        try:
            await super().stream_response(send)
        finally:
            with anyio.CancelScope(shield=True):
                await self.body_iterator.aclose()
