"""What every handler shares: the engine, the tokenizer, the operator's settings, metrics."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from fastapi import Request

from qwq.engine.async_engine import AsyncEngine
from qwq.engine.engine import LLMEngine
from qwq.server.errors import RETRY_AFTER_S, APIError
from qwq.server.grammar import Grammars
from qwq.server.guard import TENANT_KEY
from qwq.server.metrics import Metrics

DEFAULT_MAX_BODY = 4 << 20


@dataclass
class ServerConfig:
    model_name: str = "qwq-demo"
    api_keys: list[str] = field(default_factory=list)
    price_input: float = 0.0  # per prompt token, in the operator's currency
    price_output: float = 0.0  # per generated token
    max_body_bytes: int = DEFAULT_MAX_BODY
    default_system: str | None = None  # the checkpoint's default system prompt, if any
    drain_timeout: float = 30.0  # seconds SIGTERM waits for in-flight requests
    max_connections: int = 1024  # open at once; more get 503 (qwq.server.connections)
    header_timeout: float = 10.0  # seconds for a request's headers to arrive, else 408
    body_timeout: float = 30.0  # seconds for its body to arrive after them, else 408
    aliases: list[str] = field(default_factory=list)  # more names the model answers to

    @property
    def served_names(self) -> list[str]:
        return list(dict.fromkeys([self.model_name, *self.aliases]))


class ServerState:
    def __init__(self, engine: LLMEngine, config: ServerConfig,
                 async_engine: AsyncEngine | None = None):
        self.engine = engine
        self.tokenizer = engine.tokenizer
        self.config = config
        self.aeng = async_engine or AsyncEngine(engine)
        self.metrics = Metrics(self.stats, config.price_input, config.price_output)
        self.grammars = Grammars(self.tokenizer, engine.runner.model.config.vocab_size)
        self.draining = False
        self._token_bytes: list[bytes] | None = None

    def stats(self) -> dict[str, float]:
        """engine.stats() plus the prefix cache's raw counts (rates over any window)."""
        blocks = self.engine.blocks
        return {**self.engine.stats(), "prefix_hit_tokens": blocks.hit_tokens,
                "prefix_queried_tokens": blocks.queried_tokens}

    @property
    def max_model_len(self) -> int:
        return self.engine.max_model_len

    def model_name(self, asked: str | None) -> str:
        """The name asked for when it is one the model is served under (the first served
        name when none is asked); 404 for any other. Names are only compared, never resolved
        as paths, so `../x` or `/etc/passwd` reach no file."""
        if asked is None:
            return self.config.model_name
        if asked in self.config.served_names:
            return asked
        raise APIError(404, f"the model {asked[:100]!r} does not exist; this server serves "
                       f"{', '.join(map(repr, self.config.served_names))}", "model",
                       "model_not_found")

    def check_open(self) -> None:
        if self.draining:
            raise APIError(503, "the server is shutting down", code="draining",
                           headers={"Retry-After": str(RETRY_AFTER_S)})
        if not self.aeng.alive:
            raise APIError(503, "the engine has stopped; the server cannot generate",
                           code="engine_dead", headers={"Retry-After": str(RETRY_AFTER_S)})

    def token_bytes(self) -> list[bytes]:
        if self._token_bytes is None:
            self._token_bytes = self.tokenizer.token_bytes(False) or []
        return self._token_bytes

    def token_text(self, token_id: int) -> tuple[str, list[int]]:
        """How a token reads in logprobs: its text and its bytes."""
        table = self.token_bytes()
        raw = table[token_id] if 0 <= token_id < len(table) else \
            self.tokenizer.decode([token_id]).encode()
        return raw.decode("utf-8", errors="replace"), list(raw)

    def usage(self, prompt_tokens: int, completion_tokens: int,
              cached_tokens: int = 0) -> dict[str, Any]:
        cost_in, cost_out = self.metrics.costs(prompt_tokens, completion_tokens)
        return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens,
                "prompt_tokens_details": {"cached_tokens": cached_tokens},
                "cost": cost_in + cost_out,
                "cost_details": {"input": cost_in, "output": cost_out}}


def state_of(request: Request) -> ServerState:
    return request.app.state.qwq


def tenant_of(request: Request) -> str | None:
    return request.scope.get(TENANT_KEY)
