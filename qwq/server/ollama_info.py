"""Ollama's model listings: GET /api/tags, POST /api/show, GET /api/ps, GET /api/version.

There is one model, already loaded; its size is the bytes its weights take in memory (qwq does
not keep the checkpoint's path), its digest a hash of its name and shape, not of a file.
"""

from __future__ import annotations

import hashlib
from datetime import datetime, timedelta, timezone
from typing import Any

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict

from qwq import __version__
from qwq.plan import param_counts
from qwq.reasoning.controls import QWQ_PREVIEW_MARK
from qwq.server.ollama import served_name
from qwq.server.protocol import Name
from qwq.server.state import ServerState, state_of

router = APIRouter()
# what /api/version says: the Ollama API version this server speaks (clients gate features
# on it), with qwq's own version beside it
OLLAMA_API_VERSION = "0.12.0"
STARTED = datetime.now(timezone.utc)


def _rfc3339(t: datetime) -> str:
    return t.isoformat().replace("+00:00", "Z")


def _weight_bytes(model: Any) -> int:
    tensors = list(model.parameters()) + list(model.buffers())
    return sum(t.numel() * t.element_size() for t in tensors)


def _size_text(n: int) -> str:
    return f"{n / 1e9:.1f}B" if n >= 1e9 else f"{n / 1e6:.0f}M"


def _details(state: ServerState) -> dict[str, Any]:
    cfg = state.engine.runner.model.config
    return {"parent_model": "", "format": "qwq", "family": "qwen2", "families": ["qwen2"],
            "parameter_size": _size_text(sum(param_counts(cfg))),
            "quantization_level": str(state.engine.config.quantize).upper()}


def _card(state: ServerState, name: str) -> dict[str, Any]:
    cfg = state.engine.runner.model.config
    digest = hashlib.sha256(f"{name}\0{cfg}".encode()).hexdigest()
    return {"name": name, "model": name, "modified_at": _rfc3339(STARTED),
            "size": _weight_bytes(state.engine.runner.model), "digest": digest,
            "details": _details(state)}


def _names(state: ServerState) -> list[str]:
    return [f"{name}:latest" for name in state.config.served_names]


@router.get("/api/version")
async def version() -> dict[str, str]:
    return {"version": OLLAMA_API_VERSION, "qwq_version": __version__}


@router.get("/api/tags")
async def tags(request: Request) -> dict[str, Any]:
    state = state_of(request)
    return {"models": [_card(state, n) for n in _names(state)]}


@router.get("/api/ps")
async def ps(request: Request) -> dict[str, Any]:
    state = state_of(request)
    on_device = state.engine.runner.device.type == "cuda"
    expires = _rfc3339(datetime.now(timezone.utc) + timedelta(days=3650))  # never unloaded
    return {"models": [{**_card(state, n), "expires_at": expires,
                        "size_vram": _card(state, n)["size"] if on_device else 0,
                        "context_length": state.max_model_len} for n in _names(state)]}


class ShowRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")
    model: Name | None = None
    name: Name | None = None  # older clients
    verbose: bool = False


def _capabilities(state: ServerState) -> list[str]:
    template = state.tokenizer.chat_template or ""
    caps = ["completion"]
    if "tools" in template:
        caps.append("tools")
    factory = state.engine.control_factory
    if factory is not None and factory.parser_style or QWQ_PREVIEW_MARK in template:
        caps.append("thinking")
    if all(state.tokenizer.token_to_id(t) is not None
           for t in ("<|fim_prefix|>", "<|fim_suffix|>", "<|fim_middle|>")):
        caps.append("insert")
    return caps


@router.post("/api/show")
async def show(body: ShowRequest, request: Request) -> dict[str, Any]:
    state = state_of(request)
    served_name(state, body.model or body.name)
    cfg = state.engine.runner.model.config
    info = {"general.architecture": "qwen2", "general.parameter_count": sum(param_counts(cfg)),
            "qwen2.context_length": state.max_model_len,
            "qwen2.embedding_length": cfg.hidden_size,
            "qwen2.block_count": cfg.num_hidden_layers,
            "qwen2.attention.head_count": cfg.num_attention_heads,
            "qwen2.attention.head_count_kv": cfg.num_key_value_heads,
            "qwen2.feed_forward_length": cfg.intermediate_size,
            "qwen2.rope.freq_base": cfg.rope_theta}
    return {"modelfile": "", "parameters": "", "template": state.tokenizer.chat_template or "",
            "details": _details(state), "model_info": info,
            "capabilities": _capabilities(state), "modified_at": _rfc3339(STARTED)}
