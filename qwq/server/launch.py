"""Running the app: `qwq serve` in the foreground, or a server on a background thread (tests,
benchmarks). SIGTERM stops new requests (503), lets the open ones finish, then exits."""

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

from qwq.errors import QwQError
from qwq.server.state import ServerConfig


class _Server(uvicorn.Server):
    """uvicorn, plus: on SIGTERM/SIGINT the app refuses new requests at once."""

    def __init__(self, config: uvicorn.Config, app: FastAPI):
        super().__init__(config)
        self.qwq_app = app

    def handle_exit(self, sig: int, frame: Any) -> None:
        self.qwq_app.state.qwq.draining = True
        super().handle_exit(sig, frame)


def _uvicorn_config(app: FastAPI, host: str, port: int, drain_timeout: float,
                    log_level: str) -> uvicorn.Config:
    return uvicorn.Config(app, host=host, port=port, log_level=log_level,
                          timeout_graceful_shutdown=max(1, int(drain_timeout)),
                          access_log=log_level == "debug")


def serve(app: FastAPI, host: str = "127.0.0.1", port: int = 8000,
          log_level: str = "info") -> None:
    """Serve in the foreground until SIGTERM or Ctrl-C."""
    drain = app.state.qwq.config.drain_timeout
    _Server(_uvicorn_config(app, host, port, drain, log_level), app).run()


class BackgroundServer:
    """The app on 127.0.0.1, a free port, in a thread: BackgroundServer(app).start().url"""

    def __init__(self, app: FastAPI, log_level: str = "warning"):
        self.app = app
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        config = _uvicorn_config(app, "127.0.0.1", self.port, 5, log_level)
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
    from qwq.cli import engine_options
    from qwq.config import EngineConfig
    from qwq.models import load_engine
    from qwq.server.app import create_app

    keys = args.api_key or ([os.environ["QWQ_API_KEY"]] if os.environ.get("QWQ_API_KEY")
                            else [])
    if args.guard_file:  # a bad policy file fails before the model loads
        from qwq.reasoning.guard import load_guards
        try:
            load_guards(args.guard_file)
        except (OSError, ValueError, KeyError) as e:
            raise QwQError(f"--guard-file {args.guard_file}: {e}") from None
    print(f"loading {args.model or 'qwq-demo'} ...", file=sys.stderr, flush=True)
    engine, _, resolved = load_engine(
        args.model, dtype=args.dtype, device=args.device,
        engine_config=EngineConfig(max_waiting=args.max_waiting, **engine_options(args)),
        tensor_parallel_size=args.tensor_parallel_size, exit_on_rank_failure=True)
    names = args.served_model_name or [resolved.name]
    if args.chat_template:
        from qwq.server.prompts import use_chat_template
        use_chat_template(engine, args.chat_template, args.reasoning_parser)
    config = ServerConfig(model_name=names[0], aliases=names[1:], api_keys=keys,
                          price_input=args.price_input, price_output=args.price_output,
                          default_system=resolved.default_system,
                          drain_timeout=args.drain_timeout)
    serve(create_app(engine, config), args.host, args.port)
    return 0
