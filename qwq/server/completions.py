"""POST /v1/completions: raw prompts (a string, strings, token ids or lists of them), echo,
logprobs, streaming or not. Each prompt is its own engine request; all run at once."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import anyio
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from qwq.engine.async_engine import EngineDeadError
from qwq.errors import RequestError, TooManyTokens
from qwq.outputs import CompletionOutput
from qwq.server.errors import APIError, from_exception
from qwq.server.metrics import RequestTrack
from qwq.server.prompts import fim_ids
from qwq.server.protocol import CompletionRequest
from qwq.server.render import completion_logprobs, ending, finish_reason, logprob_entries
from qwq.server.sampling import (
    CONFLICTING_FIELDS,
    prompt_too_long,
    resolve_max_tokens,
    sampling_params,
)
from qwq.server.state import ServerState, state_of, tenant_of
from qwq.server.streaming import (
    DONE,
    ClientGone,
    SSEResponse,
    Stream,
    failed_event,
    sse,
    start_tracked,
    watch,
)

router = APIRouter()


@dataclass
class Prompt:
    text: str  # as echoed
    ids: list[int]


@dataclass
class CompletionJob:
    state: ServerState
    body: CompletionRequest
    model: str
    prompts: list[Prompt]
    request_id: str = field(default_factory=lambda: f"cmpl-{uuid.uuid4().hex}")
    created: int = field(default_factory=lambda: int(time.time()))


def _prompts(state: ServerState, prompt: Any) -> list[Prompt]:
    """Every form of `prompt` as (text, ids); text is tokenized with special tokens read as
    such (the caller writes the raw prompt, template tokens included). A prompt beyond the
    context is refused as soon as that is certain, without tokenizing the rest of it."""
    tok, limit = state.tokenizer, state.max_model_len - 1
    if isinstance(prompt, str) or prompt and isinstance(prompt[0], int):
        prompt = [prompt]
    out = []
    for p in prompt:
        if isinstance(p, str):
            try:
                out.append(Prompt(p, tok.encode(p, allow_special=True, max_tokens=limit)))
            except TooManyTokens:
                raise prompt_too_long(state.max_model_len, "prompt") from None
        else:
            if len(p) > limit:
                raise prompt_too_long(state.max_model_len, "prompt")
            if any(t >= tok.vocab_size for t in p):
                raise RequestError(f"prompt token ids must lie in [0, {tok.vocab_size})",
                                   param="prompt")
            out.append(Prompt(tok.decode(p), list(p)))
    if any(not p.ids for p in out):
        raise RequestError("the prompt is empty", param="prompt")
    return out


async def _prepare(state: ServerState, body: CompletionRequest, model: str) -> CompletionJob:
    if body.best_of is not None and body.best_of != body.n:
        raise RequestError("best_of must equal n (or be left out)", param="best_of",
                           code=CONFLICTING_FIELDS)
    if body.suffix is not None:
        prompts = await anyio.to_thread.run_sync(_fim_prompts, state, body.prompt, body.suffix)
        if body.conclude is None:  # code in the middle: no end-of-reasoning marker forced in
            body.conclude = False
    else:
        prompts = await anyio.to_thread.run_sync(_prompts, state, body.prompt)
    return CompletionJob(state, body, model, prompts)


def _fim_prompts(state: ServerState, prompt: Any, suffix: str) -> list[Prompt]:
    """Fill-in-the-middle: each text prompt is the code before the gap, suffix the code after."""
    texts = [prompt] if isinstance(prompt, str) else prompt
    if not all(isinstance(t, str) for t in texts):
        raise RequestError("suffix needs text prompts, not token ids", param="prompt")
    return [Prompt(t, fim_ids(state.tokenizer, t, suffix)) for t in texts]


@router.post("/v1/completions")
async def create_completion(body: CompletionRequest, request: Request) -> Response:
    state = state_of(request)
    model = state.model_name(body.model)
    state.check_open()
    job = await _prepare(state, body, model)
    tenant = tenant_of(request)
    params = [sampling_params(body, max_tokens=resolve_max_tokens(
        body.max_tokens, len(p.ids), state.max_model_len, "prompt"), logprobs=body.logprobs,
        prompt_logprobs=body.logprobs if body.echo else None,
        vocab_size=state.tokenizer.vocab_size, tenant=tenant) for p in job.prompts]
    track = state.metrics.track("completions")
    streams = [Stream(state, p.ids, sp, f"{job.request_id}-{i}", track)
               for i, (p, sp) in enumerate(zip(job.prompts, params))]
    refused = await start_tracked(streams, request, track)
    if refused is not None:
        return refused
    if body.stream:
        return SSEResponse(_events(job, streams, track))
    return await _complete(job, streams, track, request)


def _usage_counts(streams: list[Stream]) -> tuple[int, int, int]:
    counts = [s.usage_counts() for s in streams]
    return tuple(sum(c[i] for c in counts) for i in range(3))  # type: ignore[return-value]


def _choice(job: CompletionJob, k: int, o: CompletionOutput, text: str,
            entries: list, echo: bool, offset: int,
            prompt_logprobs: list | None = None) -> dict[str, Any]:
    body, prompt = job.body, job.prompts[k]
    logprobs = None
    if body.logprobs is not None:
        logprobs = completion_logprobs(job.state, entries, body.logprobs, offset,
                                       prompt.ids if echo else None,
                                       prompt_logprobs if echo else None)
    choice = {"index": k * body.n + o.index, "text": (prompt.text if echo else "") + text,
              "logprobs": logprobs, "finish_reason": finish_reason(o), **ending(o)}
    if body.return_token_ids:
        choice["prompt_token_ids"] = prompt.ids
        choice["token_ids"] = list(o.delta_token_ids if body.stream else o.token_ids)
    return choice


async def _complete(job: CompletionJob, streams: list[Stream], track: RequestTrack,
                    request: Request) -> Response:
    async def finals() -> list:
        return [await s.final() for s in streams]

    try:
        outs = await watch(finals(), request)
    except ClientGone:
        track.finish("disconnected", *_usage_counts(streams)[:2])
        return Response(status_code=499)
    except EngineDeadError as e:
        track.finish("error")
        raise from_exception(e) from None
    finally:
        for s in streams:
            await s.close()
    prompt, completion, cached = _usage_counts(streams)
    failed = next((o for out in outs for o in out.outputs if o.finish_reason == "error"), None)
    if failed is not None:
        track.finish("error", prompt, completion)
        raise APIError(500, failed.error or "generation failed", code="generation_failed")
    track.finish("ok", prompt, completion)
    choices = [_choice(job, k, o, o.text, o.logprobs or [], job.body.echo, 0,
                       out.prompt_logprobs)
               for k, out in enumerate(outs) for o in out.outputs]
    return JSONResponse({"id": job.request_id, "object": "text_completion",
                         "created": job.created, "model": job.model, "choices": choices,
                         "usage": job.state.usage(prompt, completion, cached)})


async def _events(job: CompletionJob, streams: list[Stream],
                  track: RequestTrack) -> AsyncIterator[bytes]:
    """Prompts stream one after another (all of them run in the engine at once)."""
    outcome = "disconnected"
    try:
        for k, stream in enumerate(streams):
            sent: dict[int, tuple[int, int]] = {}  # choice -> (logprob entries, text chars)
            async for out in stream.outputs():
                for o in out.outputs:
                    if (failed := failed_event(o)) is not None:
                        outcome = "error"
                        yield failed
                        return
                    chunk = _stream_choice(job, k, o, sent, out.prompt_logprobs)
                    if chunk is not None:
                        yield sse(_chunk(job, [chunk]))
        opts = job.body.stream_options
        if opts is not None and opts.include_usage:
            yield sse(_chunk(job, [], usage=job.state.usage(*_usage_counts(streams))))
        outcome = "ok"
        yield DONE
    except EngineDeadError as e:  # the engine died mid-stream: say so, then close
        outcome = "error"
        yield sse(from_exception(e).body())
    finally:
        track.finish(outcome, *_usage_counts(streams)[:2])
        for s in streams:
            await s.close()


def _chunk(job: CompletionJob, choices: list, **extra: Any) -> dict[str, Any]:
    return {"id": job.request_id, "object": "text_completion", "created": job.created,
            "model": job.model, "choices": choices, **extra}


def _stream_choice(job: CompletionJob, k: int, o: CompletionOutput,
                   sent: dict[int, tuple[int, int]],
                   prompt_logprobs: list | None = None) -> dict[str, Any] | None:
    first = o.index not in sent
    n_lp, n_chars = sent.get(o.index, (0, 0))
    if not first and n_chars == -1:
        return None  # finished already
    entries = logprob_entries(o)[n_lp:]
    echo = job.body.echo and first
    offset = len(job.prompts[k].text) + n_chars if job.body.echo else n_chars
    if echo:
        offset = 0
    if not (o.delta_text or entries or echo or o.finish_reason):
        return None
    sent[o.index] = (-1, -1) if o.finish_reason else (n_lp + len(entries),
                                                      n_chars + len(o.delta_text))
    return _choice(job, k, o, o.delta_text, entries, echo, offset, prompt_logprobs)
