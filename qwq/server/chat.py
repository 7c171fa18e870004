"""POST /v1/chat/completions: messages through the chat template, streaming or not, with
logprobs, tools (Qwen's <tool_call> blocks parsed into tool_calls), JSON output, and for
reasoning models the reasoning apart from the content (reasoning_content and reasoning, also
in stream deltas) with the boxed final_answer."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import anyio
from fastapi import APIRouter, Request
from fastapi.responses import Response

from qwq.errors import RequestError, TooManyTokens
from qwq.outputs import CompletionOutput, RequestOutput
from qwq.reasoning.parser import ReasoningStreamer, extract_boxed
from qwq.sampling_params import SamplingParams
from qwq.server.prompts import encode_messages
from qwq.server.protocol import ChatCompletionRequest
from qwq.server.render import (
    Objects,
    OpenAIJob,
    chat_logprobs,
    ending,
    finish_reason,
    logprob_entries,
)
from qwq.server.sampling import (
    CONFLICTING_FIELDS,
    chat_tools,
    prompt_too_long,
    resolve_max_tokens,
    sampling_params,
)
from qwq.server.sampling import chat_logprobs as logprobs_of
from qwq.server.state import ServerState, state_of, tenant_of
from qwq.server.streaming import ChunkChoice, Stream, respond
from qwq.server.tools import ToolCallStream, parse_tool_calls

router = APIRouter()


@dataclass(kw_only=True)
class ChatJob(OpenAIJob):
    OBJECTS: ClassVar[Objects] = Objects("chatcmpl", "chat.completion", "chat.completion.chunk")
    body: ChatCompletionRequest
    ids: list[int]
    params: SamplingParams
    tools: list[dict[str, Any]] | None
    top_n: int | None
    reasoning_style: str | None  # how answers split into reasoning and content; None: no split

    def whole(self, choices: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
        body = super().whole(choices, **extra)
        if self.body.return_token_ids:
            body["prompt_token_ids"] = self.ids
        return body


async def _constraint(state: ServerState, body: ChatCompletionRequest,
                      tools: list[dict[str, Any]] | None, style: str | None) -> list:
    """The request's grammar (a per-sequence control); for a reasoning model (style) it starts
    where the answer starts, so the reasoning stays free and the JSON lands in the content."""
    rf = body.response_format
    gate = state.grammars.gate(style, bool(tools))
    if tools and body.tool_choice not in (None, "auto"):
        build = lambda: state.grammars.tool_call_processor(tools, gate)
    elif rf is not None and rf.type == "json_object":
        build = lambda: state.grammars.json_processor(None, gate)
    elif rf is not None and rf.type == "json_schema":
        if rf.json_schema is None or rf.json_schema.schema_ is None:
            raise RequestError("response_format json_schema needs json_schema.schema",
                               param="response_format.json_schema", code=CONFLICTING_FIELDS)
        schema = rf.json_schema.schema_
        build = lambda: state.grammars.json_processor(schema, gate)
    else:
        return []
    return [await anyio.to_thread.run_sync(build)]


async def prepare(state: ServerState, body: ChatCompletionRequest, model: str,
                  tenant: str | None) -> ChatJob:
    tools = chat_tools(body)
    try:  # refused as soon as the prompt surely passes the context
        ids = await anyio.to_thread.run_sync(encode_messages, state, body, tools)
    except TooManyTokens:
        raise prompt_too_long(state.max_model_len, "messages") from None
    asked, param = (body.max_completion_tokens, "max_completion_tokens") \
        if body.max_completion_tokens is not None else (body.max_tokens, "max_tokens")
    max_tokens = resolve_max_tokens(asked, len(ids), state.max_model_len, "messages", param)
    factory = state.engine.control_factory
    style = factory.parser_style if factory is not None else None
    processors = await _constraint(state, body, tools, style)
    top_n = logprobs_of(body)
    params = sampling_params(body, max_tokens=max_tokens, logprobs=top_n,
                             vocab_size=state.tokenizer.vocab_size, tenant=tenant,
                             controls=processors)
    return ChatJob(state=state, body=body, model=model, ids=ids, params=params,
                   tools=tools if body.tool_choice != "none" else None, top_n=top_n,
                   reasoning_style=style)


@router.post("/v1/chat/completions")
async def create_chat_completion(body: ChatCompletionRequest, request: Request) -> Response:
    state = state_of(request)
    model = state.model_name(body.model)
    state.check_open()
    job = await prepare(state, body, model, tenant_of(request))
    track = state.metrics.track("chat")
    stream = Stream(state, job.ids, job.params, job.request_id, track)
    return await respond(job, [stream], request, track, _stream_choices(job),
                         lambda finals: [_choice(job, o) for o in finals[0].outputs])


# -- whole answers ------------------------------------------------------------------------------
def _reasoning_streamer(job: ChatJob) -> ReasoningStreamer | None:
    # everything before the end-of-reasoning marker is reasoning (the template may have opened
    # <think> in the prompt, and the Preview style never opens it); with tools offered a tool
    # call starts the answer too
    return ReasoningStreamer(job.reasoning_style, in_reasoning=True, tools=bool(job.tools)) \
        if job.reasoning_style else None


def _final_answer(reasoning: str, content: str | None) -> str | None:
    content = content or ""
    return extract_boxed(content) or (extract_boxed(reasoning) if not content.strip() else None)


def _reasoning_fields(reasoning: str, content: str) -> dict[str, Any]:
    """reasoning_content (DeepSeek's name) and reasoning (vLLM's), and the boxed answer."""
    out: dict[str, Any] = {"reasoning_content": reasoning, "reasoning": reasoning} \
        if reasoning else {}
    answer = _final_answer(reasoning, content)
    if answer is not None:
        out["final_answer"] = answer
    return out


def finish_of(o: CompletionOutput, called: bool) -> str | None:
    """A choice that ends with tool calls says so, unless max_tokens cut it (a call may be
    unfinished: "length" says that)."""
    reason = finish_reason(o)
    return "tool_calls" if called and reason != "length" else reason


def _choice(job: ChatJob, o: CompletionOutput) -> dict[str, Any]:
    splitter = _reasoning_streamer(job)
    reasoning, text = splitter.split(o.text) if splitter else ("", o.text)
    content, calls = parse_tool_calls(text) if job.tools else (text, [])
    message: dict[str, Any] = {"role": "assistant", "content": content,
                               **_reasoning_fields(reasoning, content)}
    if calls:
        message["tool_calls"] = calls
    choice = {"index": o.index, "message": message,
              "logprobs": chat_logprobs(job.state, o.logprobs or [], job.top_n)
              if job.top_n is not None else None,
              "finish_reason": finish_of(o, bool(calls)), **ending(o)}
    if job.body.return_token_ids:
        choice["token_ids"] = list(o.token_ids)
    return choice


# -- streamed answers ---------------------------------------------------------------------------
@dataclass
class _ChoiceState:
    tools: ToolCallStream | None
    reasoning: ReasoningStreamer | None
    reasoning_text: str = ""
    content_text: str = ""
    started: bool = False
    logprobs_sent: int = 0
    done: bool = False


def _delta(job: ChatJob, st: _ChoiceState, o: CompletionOutput) -> dict[str, Any] | None:
    """The chunk choice for what o adds, or None when it adds nothing."""
    delta: dict[str, Any] = {}
    if not st.started:
        st.started = True
        delta = {"role": "assistant", "content": ""}
    finishing = o.finish_reason is not None
    reasoning, text = split_delta(st.reasoning, o.delta_text, finishing)
    if reasoning:
        delta["reasoning_content"] = delta["reasoning"] = reasoning
        st.reasoning_text += reasoning
    text, calls = tool_deltas(st.tools, text, finishing)
    if text:
        delta["content"] = text
        st.content_text += text
    if calls:
        delta["tool_calls"] = calls
    logprobs = None
    entries = logprob_entries(o) if job.top_n is not None else []
    if len(entries) > st.logprobs_sent:
        logprobs = chat_logprobs(job.state, entries[st.logprobs_sent:], job.top_n)
        st.logprobs_sent = len(entries)
    reason = None
    if finishing:
        st.done = True
        reason = finish_of(o, bool(st.tools and st.tools.calls))
        answer = _final_answer(st.reasoning_text, st.content_text)
        if answer is not None:
            delta["final_answer"] = answer
    if not delta and logprobs is None and reason is None:
        return None
    choice = {"index": o.index, "delta": delta, "logprobs": logprobs, "finish_reason": reason}
    if reason is not None:
        choice.update(ending(o))
    return choice


def split_delta(splitter: ReasoningStreamer | None, text: str,
                 finishing: bool) -> tuple[str, str]:
    """(reasoning, content) that this text delta settles."""
    if splitter is None:
        return "", text
    reasoning, content = splitter.feed(text)
    if finishing:
        r, c = splitter.finish()
        reasoning, content = reasoning + r, content + c
    return reasoning, content


def tool_deltas(tools: ToolCallStream | None, text: str,
                 finishing: bool) -> tuple[str, list[dict[str, Any]]]:
    """(content, tool-call deltas) that this content delta settles: a call streams as the
    model writes it, its id and name first, then its arguments in fragments."""
    if tools is None:
        return text, []
    content, calls = tools.feed(text)
    if finishing:
        rest, more = tools.finish()
        content, calls = content + rest, calls + more
    return content, calls


def _stream_choices(job: ChatJob) -> ChunkChoice:
    """The chunk choice for what each output adds to its choice, None when it adds nothing."""
    states: dict[int, _ChoiceState] = {}

    def choice(_k: int, _out: RequestOutput, o: CompletionOutput) -> dict[str, Any] | None:
        st = states.get(o.index) or states.setdefault(o.index, _ChoiceState(
            ToolCallStream() if job.tools else None, _reasoning_streamer(job)))
        return None if st.done else _delta(job, st, o)

    return choice
