"""Running the app: `qwq serve` in the foreground, or a server on a background thread (tests,
benchmarks). SIGTERM stops new requests (503 with Retry-After, /health 503 too) while the open
ones finish, then stops listening and exits. Connections are capped and must send their
headers in time (qwq.server.connections)."""

from __future__ import annotations

import argparse
import os
import socket
import sys
import threading
import time
from typing import Any

import uvicorn
from fastapi import FastAPI

from qwq.cli_options import engine_options
from qwq.config import EngineConfig
from qwq.errors import QwQError
from qwq.models import load_engine
from qwq.reasoning.guard import load_guards
from qwq.server.app import create_app
from qwq.server.connections import ConnectionLimits, limited_protocol
from qwq.server.prompts import use_chat_template
from qwq.server.state import ServerConfig


class _Server(uvicorn.Server):
    """uvicorn, plus a drain: on the first SIGTERM/SIGINT the app answers new requests 503
    while the engine finishes the open ones, and the socket stays open (a balancer gets a 503
    it can act on, not a refused connection); once none is left, or after drain_timeout,
    uvicorn shuts down as usual. A second signal shuts down at once."""

    def __init__(self, config: uvicorn.Config, app: FastAPI):
        super().__init__(config)
        self.qwq_app = app
        self.drain_signal: int | None = None
        self.drain_since = 0.0

    def handle_exit(self, sig: int, frame: Any) -> None:
        if self.drain_signal is not None:
            return super().handle_exit(sig, frame)
        self.qwq_app.state.qwq.draining = True
        self.drain_signal, self.drain_since = sig, time.monotonic()

    async def on_tick(self, counter: int) -> bool:
        if self.drain_signal is not None and not self.should_exit and self._drained():
            super().handle_exit(self.drain_signal, None)  # uvicorn re-raises it on exit
        return await super().on_tick(counter)

    def _drained(self) -> bool:
        state = self.qwq_app.state.qwq
        return state.aeng.num_active() == 0 \
            or time.monotonic() - self.drain_since > state.config.drain_timeout


def _uvicorn_config(app: FastAPI, host: str, port: int, log_level: str,
                    graceful_s: float | None = None) -> uvicorn.Config:
    """graceful_s: how long shutting down waits for open connections (default drain_timeout)."""
    config: ServerConfig = app.state.qwq.config
    limits = ConnectionLimits(config.max_connections, config.header_timeout)
    graceful = config.drain_timeout if graceful_s is None else graceful_s
    return uvicorn.Config(app, host=host, port=port, log_level=log_level,
                          http=limited_protocol(limits),
                          timeout_graceful_shutdown=max(1, int(graceful)),
                          access_log=log_level == "debug")


def serve(app: FastAPI, host: str = "127.0.0.1", port: int = 8000,
          log_level: str = "info") -> None:
    """Serve in the foreground until SIGTERM or Ctrl-C."""
    _Server(_uvicorn_config(app, host, port, log_level), app).run()


class BackgroundServer:
    """The app on 127.0.0.1, a free port, in a thread: BackgroundServer(app).start().url"""

    def __init__(self, app: FastAPI, log_level: str = "warning"):
        self.app = app
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        config = _uvicorn_config(app, "127.0.0.1", self.port, log_level, graceful_s=5)
        self.server = _Server(config, app)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]},
                                       name="qwq-server", daemon=True)

    def start(self) -> BackgroundServer:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the server did not start")
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)
        self.sock.close()


def cmd_serve(args: argparse.Namespace) -> int:
    keys = args.api_key or ([os.environ["QWQ_API_KEY"]] if os.environ.get("QWQ_API_KEY")
                            else [])
    if args.guard_file:  # a bad policy file fails before the model loads
        try:
            load_guards(args.guard_file)
        except (OSError, ValueError, KeyError) as e:
            raise QwQError(f"--guard-file {args.guard_file}: {e}") from None
    print(f"loading {args.model or 'qwq-demo'} ...", file=sys.stderr, flush=True)
    engine, _, resolved = load_engine(
        args.model, dtype=args.dtype, device=args.device,
        engine_config=EngineConfig(**capacity_options(args), **engine_options(args)),
        tensor_parallel_size=args.tensor_parallel_size, exit_on_rank_failure=True)
    names = args.served_model_name or [resolved.name]
    if args.chat_template:
        use_chat_template(engine, args.chat_template, args.reasoning_parser)
    config = ServerConfig(model_name=names[0], aliases=names[1:], api_keys=keys,
                          price_input=args.price_input, price_output=args.price_output,
                          default_system=resolved.default_system,
                          drain_timeout=args.drain_timeout, max_body_bytes=args.max_body_size,
                          max_connections=args.max_connections,
                          header_timeout=args.header_timeout, body_timeout=args.body_timeout)
    serve(create_app(engine, config), args.host, args.port)
    return 0


def capacity_options(args: argparse.Namespace) -> dict[str, Any]:
    """The EngineConfig fields `qwq serve` sets (queue, KV cache, step budget)."""
    for name in ("max_num_seqs", "num_kv_blocks", "max_num_batched_tokens", "max_connections"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise QwQError(f"--{name.replace('_', '-')} must be at least 1, got {value}")
    for name in ("header_timeout", "body_timeout"):
        if not getattr(args, name) > 0:
            raise QwQError(f"--{name.replace('_', '-')} must be positive")
    return {"max_waiting": args.max_waiting, "kv_cache_memory": args.kv_cache_memory,
            "num_kv_blocks": args.num_kv_blocks, "max_num_seqs": args.max_num_seqs,
            "max_num_batched_tokens": args.max_num_batched_tokens,
            "long_prefill_token_threshold": args.long_prefill_token_threshold}
