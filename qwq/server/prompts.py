"""Prompts the way vLLM users write them: chat_template_kwargs, assistant prefill
(continue_final_message, or add_generation_prompt false after an assistant message), and
fill-in-the-middle for completions with a suffix."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from qwq.chat_template import ChatTemplate
from qwq.errors import QwQError, RequestError, TemplateError
from qwq.reasoning.controls import ControlFactory
from qwq.server.protocol import ChatCompletionRequest
from qwq.server.sampling import template_message
from qwq.server.state import ServerState
from qwq.tokenizer import Tokenizer

# template variables a request may not set through chat_template_kwargs: the server sets them
RESERVED_KWARGS = ("messages", "tools", "documents", "add_generation_prompt",
                   "continue_final_message", "default_system", "bos_token", "eos_token",
                   "pad_token")
# Qwen2.5-Coder's fill-in-the-middle tokens: prefix, suffix, then the model writes the middle
FIM_TOKENS = ("<|fim_prefix|>", "<|fim_suffix|>", "<|fim_middle|>")


def template_kwargs(kwargs: dict[str, Any] | None) -> dict[str, Any]:
    kwargs = dict(kwargs or {})
    taken = [k for k in kwargs if k in RESERVED_KWARGS]
    if taken:
        raise RequestError(f"chat_template_kwargs may not set {', '.join(taken)}",
                           param="chat_template_kwargs")
    return kwargs


def continues(body: ChatCompletionRequest) -> bool:
    """Does the answer continue the last (assistant) message? continue_final_message says so;
    so does add_generation_prompt false when the conversation ends with the assistant."""
    last = body.messages[-1].role
    if body.continue_final_message and last != "assistant":
        raise RequestError("continue_final_message needs the last message to be the "
                           "assistant's", param="continue_final_message")
    return body.continue_final_message or (not body.add_generation_prompt and last == "assistant")


def encode_messages(state: ServerState, body: ChatCompletionRequest,
                    tools: list[dict[str, Any]] | None) -> list[int]:
    """The prompt ids of a chat request."""
    messages = [template_message(m) for m in body.messages]
    prefill = continues(body)
    return state.tokenizer.encode_chat(
        messages, add_generation_prompt=body.add_generation_prompt and not prefill,
        tools=tools, default_system=state.config.default_system,
        continue_final_message=prefill, max_tokens=state.max_model_len - 1,
        **template_kwargs(body.chat_template_kwargs))


def fim_ids(tokenizer: Tokenizer, prefix: str, suffix: str) -> list[int]:
    """<|fim_prefix|>prefix<|fim_suffix|>suffix<|fim_middle|>, the text never read as control
    tokens; a clear error for a tokenizer without these tokens."""
    ids = [tokenizer.token_to_id(t) for t in FIM_TOKENS]
    if None in ids:
        raise RequestError("suffix needs a model with fill-in-the-middle tokens "
                           f"({', '.join(FIM_TOKENS)}, as Qwen2.5-Coder has); this one has none",
                           param="suffix")
    pre, suf, mid = ids
    return [pre, *tokenizer.encode(prefix), suf, *tokenizer.encode(suffix), mid]



def use_chat_template(engine: Any, template: str, reasoning_parser: str = "auto") -> None:
    """--chat-template: a file, or the template text itself, replaces the checkpoint's. It is
    compiled now, so a broken template fails at start-up, not on the first request."""
    path = Path(template).expanduser()
    if path.is_file():
        text = path.read_text(encoding="utf-8")
    elif "{{" in template or "{%" in template:
        text = template
    else:
        raise QwQError(f"--chat-template {template!r}: no such file (and not a template)")
    try:
        ChatTemplate(text)
    except TemplateError as e:
        raise QwQError(f"--chat-template: {e}") from None
    engine.tokenizer.chat_templates = {"default": text}
    if reasoning_parser == "auto":  # the reasoning style is read from the template
        engine.control_factory = ControlFactory.for_tokenizer(engine.tokenizer, "auto")
