"""vLLM's small endpoints: POST /tokenize (a prompt, or chat messages through the template, as
the chat route would render them), POST /detokenize, GET /version."""

from __future__ import annotations

from typing import Annotated, Any

import anyio
from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field

from qwq import __version__
from qwq.errors import RequestError
from qwq.server.bridge import validated
from qwq.server.prompts import encode_messages
from qwq.server.protocol import MAX_PROMPT_IDS, ChatCompletionRequest, Name, TokenId
from qwq.server.sampling import chat_tools
from qwq.server.state import state_of

router = APIRouter()


class TokenizeRequest(BaseModel):
    """A prompt, or chat messages (with tools, add_generation_prompt, continue_final_message,
    chat_template_kwargs, as in a chat request)."""

    model_config = ConfigDict(extra="allow")
    model: Name | None = None
    prompt: str | None = None
    messages: list[Any] | None = None
    add_special_tokens: bool = True
    return_token_strs: bool = False


class DetokenizeRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")
    model: Name | None = None
    tokens: Annotated[list[TokenId], Field(max_length=MAX_PROMPT_IDS)]


@router.post("/tokenize")
async def tokenize(body: TokenizeRequest, request: Request) -> dict[str, Any]:
    state = state_of(request)
    state.model_name(body.model)
    if (body.prompt is None) == (body.messages is None):
        raise RequestError("send either prompt or messages", param="prompt")
    if body.prompt is not None:
        ids = await anyio.to_thread.run_sync(
            lambda: state.tokenizer.encode(body.prompt, allow_special=True))
    else:
        chat = validated(ChatCompletionRequest, {**(body.model_extra or {}),
                                                 "messages": body.messages})
        ids = await anyio.to_thread.run_sync(encode_messages, state, chat, chat_tools(chat))
    out: dict[str, Any] = {"count": len(ids), "max_model_len": state.max_model_len,
                           "tokens": ids, "token_strs": None}
    if body.return_token_strs:
        out["token_strs"] = [state.tokenizer.id_to_token(i) for i in ids]
    return out


@router.post("/detokenize")
async def detokenize(body: DetokenizeRequest, request: Request) -> dict[str, str]:
    state = state_of(request)
    state.model_name(body.model)
    vocab = state.tokenizer.vocab_size
    if any(t >= vocab for t in body.tokens):
        raise RequestError(f"token ids must lie in [0, {vocab})", param="tokens")
    return {"prompt": state.tokenizer.decode(body.tokens)}


@router.get("/version")
async def version() -> dict[str, str]:
    return {"version": __version__}
