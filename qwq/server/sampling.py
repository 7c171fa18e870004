"""From a validated request body to what the engine takes: prompt ids and SamplingParams.

Checks that need the model happen here, each failing with a RequestError that names its
param: prompt plus max_tokens beyond the context, token ids outside the vocabulary, a
logit_bias key that is not a token id, min_tokens above max_tokens.
"""

from __future__ import annotations

import json
import re
from typing import Any

from qwq.errors import RequestError
from qwq.sampling_params import ControlMaker, SamplingParams
from qwq.server.protocol import ChatCompletionRequest, ChatMessage, SamplingFields

# 400 codes for rules a JSON schema cannot state (the OpenAPI document lists them): the
# prompt's tokens against the context, fields that contradict each other, and schemas
# (response_format, tool parameters) the grammar compiler refuses
CONTEXT_LENGTH_EXCEEDED = "context_length_exceeded"
CONFLICTING_FIELDS = "conflicting_fields"
INVALID_JSON_SCHEMA = "invalid_json_schema"
_TOKEN_ID = re.compile(r"[0-9]{1,16}")  # logit_bias keys: digits only, as the schema says


def resolve_max_tokens(asked: int | None, prompt_len: int, max_model_len: int,
                       prompt_param: str, param: str = "max_tokens") -> int:
    """max_tokens as asked, checked against the room the context leaves; all of it if unset."""
    room = max_model_len - prompt_len
    if room < 1:
        raise RequestError(f"the prompt has {prompt_len} tokens; this model's context holds "
                           f"{max_model_len} (prompt plus at least one new token)",
                           param=prompt_param, code=CONTEXT_LENGTH_EXCEEDED)
    if asked is None:
        return room
    if asked > room:
        raise RequestError(f"{param}={asked} plus the prompt's {prompt_len} tokens is more than "
                           f"this model's context of {max_model_len} tokens", param=param,
                           code=CONTEXT_LENGTH_EXCEEDED)
    return asked


def prompt_too_long(max_model_len: int, param: str) -> RequestError:
    """The error for a prompt refused while it was being counted (Tokenizer's TooManyTokens)."""
    return RequestError(f"the prompt has more than {max_model_len - 1} tokens; this model's "
                        f"context holds {max_model_len} (prompt plus at least one new token)",
                        param=param, code=CONTEXT_LENGTH_EXCEEDED)


def _logit_bias(bias: dict[str, float] | None) -> dict[int, float] | None:
    if not bias:
        return None
    out = {}
    for key, value in bias.items():
        if not _TOKEN_ID.fullmatch(key):  # int() would also take " 5", "+5", "5_0", "٥"
            raise RequestError(f"logit_bias keys must be token ids, got {key[:20]!r}",
                               param="logit_bias")
        out[int(key)] = value
    return out


def _salt(tenant: str | None, cache_salt: str | None) -> str | None:
    """Prefix-cache hits never cross API keys, nor requests with different cache_salt."""
    parts = [p for p in (tenant, cache_salt) if p]
    return "\x1f".join(parts) if parts else None


def sampling_params(body: SamplingFields, *, max_tokens: int, logprobs: int | None,
                    vocab_size: int, tenant: str | None, prompt_logprobs: int | None = None,
                    controls: list[ControlMaker] | None = None) -> SamplingParams:
    """SamplingParams for the request; raises RequestError (param set) for bad values."""
    if body.min_tokens > max_tokens:
        raise RequestError(f"min_tokens={body.min_tokens} is more than max_tokens={max_tokens} "
                           "(or the room the prompt leaves in the context)", param="min_tokens",
                           code=CONFLICTING_FIELDS)
    params = SamplingParams(
        n=body.n, temperature=body.temperature, top_p=body.top_p, top_k=body.top_k,
        min_p=body.min_p, presence_penalty=body.presence_penalty or 0.0,
        frequency_penalty=body.frequency_penalty or 0.0,
        repetition_penalty=body.repetition_penalty, seed=body.seed, stop=body.stop,
        stop_token_ids=body.stop_token_ids, max_tokens=max_tokens, min_tokens=body.min_tokens,
        ignore_eos=body.ignore_eos, logprobs=logprobs, prompt_logprobs=prompt_logprobs,
        skip_special_tokens=body.skip_special_tokens,
        include_stop_str_in_output=body.include_stop_str_in_output,
        logit_bias=_logit_bias(body.logit_bias), cache_salt=_salt(tenant, body.cache_salt),
        max_thinking_tokens=body.max_thinking_tokens, reasoning_effort=body.reasoning_effort,
        loop_control=body.loop_control, language=body.language, guard=body.guard,
        conclude=body.conclude, controls=controls)
    params.validate(vocab_size)
    return params


# -- chat messages ------------------------------------------------------------------------------
def _arguments(text: str) -> Any:
    """Tool-call arguments come as a JSON string; templates want the object."""
    try:
        return json.loads(text) if text else {}
    except json.JSONDecodeError:
        return text


def template_message(m: ChatMessage) -> dict[str, Any]:
    """One OpenAI message as the chat template expects it."""
    content = m.content
    if isinstance(content, list):
        content = "\n".join(part.text for part in content)
    msg: dict[str, Any] = {"role": "system" if m.role == "developer" else m.role,
                           "content": content or ""}
    if m.name:
        msg["name"] = m.name
    if m.tool_call_id:
        msg["tool_call_id"] = m.tool_call_id
    if m.reasoning_content:
        msg["reasoning_content"] = m.reasoning_content
    if m.tool_calls:
        msg["tool_calls"] = [{"id": c.id, "type": "function",
                              "function": {"name": c.function.name,
                                           "arguments": _arguments(c.function.arguments)}}
                             for c in m.tool_calls]
    return msg


def chat_tools(body: ChatCompletionRequest) -> list[dict[str, Any]] | None:
    """The tools to show the model (none when tool_choice is "none")."""
    if body.tool_choice not in (None, "none", "auto") and not body.tools:
        raise RequestError("tool_choice asks for a tool call, but the request has no tools",
                           param="tool_choice", code=CONFLICTING_FIELDS)
    if not body.tools or body.tool_choice == "none":
        return None
    tools = [t.model_dump(exclude_none=True) for t in body.tools]
    choice = body.tool_choice
    if choice is not None and not isinstance(choice, str):
        tools = [t for t in tools if t["function"]["name"] == choice.function.name]
        if not tools:
            raise RequestError(f"tool_choice names {choice.function.name!r}, which is not in "
                               "tools", param="tool_choice", code=CONFLICTING_FIELDS)
    return tools


def chat_logprobs(body: ChatCompletionRequest) -> int | None:
    if body.top_logprobs is not None and not body.logprobs:
        raise RequestError("top_logprobs needs logprobs: true", param="top_logprobs",
                           code=CONFLICTING_FIELDS)
    return (body.top_logprobs or 0) if body.logprobs else None
