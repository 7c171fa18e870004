"""POST /v1/completions: raw prompts (a string, strings, token ids or lists of them), echo,
logprobs, streaming or not. Each prompt is its own engine request; all run at once."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import anyio
from fastapi import APIRouter, Request
from fastapi.responses import Response

from qwq.errors import RequestError, TooManyTokens
from qwq.outputs import CompletionOutput, RequestOutput
from qwq.server.prompts import fim_ids
from qwq.server.protocol import CompletionRequest
from qwq.server.render import (
    Objects,
    OpenAIJob,
    completion_logprobs,
    ending,
    finish_reason,
    logprob_entries,
)
from qwq.server.sampling import (
    CONFLICTING_FIELDS,
    prompt_too_long,
    resolve_max_tokens,
    sampling_params,
)
from qwq.server.state import ServerState, state_of, tenant_of
from qwq.server.streaming import ChunkChoice, Stream, respond

router = APIRouter()


@dataclass
class Prompt:
    text: str  # as echoed
    ids: list[int]


@dataclass(kw_only=True)
class CompletionJob(OpenAIJob):
    OBJECTS: ClassVar[Objects] = Objects("cmpl", "text_completion", "text_completion")
    body: CompletionRequest
    prompts: list[Prompt]


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
    return CompletionJob(state=state, body=body, model=model, prompts=prompts)


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
    return await respond(job, streams, request, track, _stream_choices(job),
                         lambda finals: _whole_choices(job, finals))


def _whole_choices(job: CompletionJob, finals: list[RequestOutput]) -> list[dict[str, Any]]:
    return [_choice(job, k, o, o.text, o.logprobs or [], job.body.echo, 0, out.prompt_logprobs)
            for k, out in enumerate(finals) for o in out.outputs]


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


def _stream_choices(job: CompletionJob) -> ChunkChoice:
    """The chunk choice for what each output adds to its choice, None when it adds nothing."""
    # per prompt: choice index -> (logprob entries, text chars) sent, (-1, -1) once finished
    sent: list[dict[int, tuple[int, int]]] = [{} for _ in job.prompts]

    def choice(k: int, out: RequestOutput, o: CompletionOutput) -> dict[str, Any] | None:
        return _stream_choice(job, k, o, sent[k], out.prompt_logprobs)

    return choice
