"""The FastAPI app: OpenAI-compatible endpoints, /health, /metrics and the chat page.

    app = create_app(engine, ServerConfig(model_name="qwq-demo", api_keys=["k"]))

Middleware order, outermost first: API key (every route but /health), body size limit (413
before any parsing), then FastAPI. Shutting down (SIGTERM) drains in-flight requests.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from prometheus_client import CONTENT_TYPE_LATEST

from qwq.engine.async_engine import AsyncEngine
from qwq.engine.engine import LLMEngine
from qwq.server import (
    anthropic,
    chat,
    completions,
    errors,
    ollama,
    ollama_info,
    openapi,
    responses,
    tokens,
)
from qwq.server.guard import APIKeyGuard, BodyLimit
from qwq.server.state import ServerConfig, ServerState, state_of

STATIC = Path(__file__).parent / "static"
# The chat page runs only its own files: model output it shows cannot bring in scripts,
# handlers, frames or images from elsewhere even if the sanitizer missed something.
PAGE_CSP = ("default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
            "img-src 'self' data:; font-src 'self'; connect-src 'self'; object-src 'none'; "
            "base-uri 'none'; form-action 'self'; frame-ancestors 'none'")


def create_app(engine: LLMEngine, config: ServerConfig | None = None,
               async_engine: AsyncEngine | None = None) -> FastAPI:
    """An app serving engine; it steps the engine on its own thread (AsyncEngine)."""
    config = config or ServerConfig()
    state = ServerState(engine, config, async_engine)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        state.draining = True
        await state.aeng.drain(config.drain_timeout)
        state.aeng.shutdown()

    app = FastAPI(title="qwq", version="0.1.0", lifespan=lifespan,
                  description="OpenAI-compatible API over the qwq engine", docs_url="/docs",
                  redoc_url=None)
    app.state.qwq = state
    errors.install(app)
    app.include_router(chat.router)
    app.include_router(completions.router)
    app.include_router(anthropic.router)
    app.include_router(responses.router)
    app.include_router(ollama.router)
    app.include_router(ollama_info.router)
    app.include_router(tokens.router)
    _add_routes(app, state)
    openapi.install(app, state)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    app.add_middleware(BodyLimit, max_bytes=config.max_body_bytes, timeout=config.body_timeout)
    app.add_middleware(APIKeyGuard, keys=list(config.api_keys))
    return app


def _model_card(state: ServerState, name: str) -> dict:
    return {"id": name, "object": "model", "created": int(time.time()),
            "owned_by": "qwq", "max_model_len": state.max_model_len}


def _add_routes(app: FastAPI, state: ServerState) -> None:
    @app.get("/health")
    async def health() -> Response:
        if state.draining or not state.aeng.alive:
            return JSONResponse({"status": "unavailable"}, status_code=503,
                                headers={"Retry-After": "1"})
        return JSONResponse({"status": "ok"})

    @app.get("/v1/models")
    async def list_models() -> dict:
        return {"object": "list",
                "data": [_model_card(state, n) for n in state.config.served_names]}

    @app.get("/v1/models/{model:path}")
    async def get_model(model: str, request: Request) -> dict:
        return _model_card(state, state_of(request).model_name(model))

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(state.metrics.render(), media_type=CONTENT_TYPE_LATEST)

    @app.get("/", include_in_schema=False)
    async def page() -> Response:
        return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache",
                                                            "Content-Security-Policy": PAGE_CSP})
