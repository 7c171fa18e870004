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
from qwq.server import chat, completions, errors, openapi
from qwq.server.guard import APIKeyGuard, BodyLimit
from qwq.server.state import ServerConfig, ServerState, state_of

STATIC = Path(__file__).parent / "static"


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
    _add_routes(app, state)
    openapi.install(app, state)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    app.add_middleware(BodyLimit, max_bytes=config.max_body_bytes, timeout=config.body_timeout)
    app.add_middleware(APIKeyGuard, keys=list(config.api_keys))
    return app


def _model_card(state: ServerState) -> dict:
    return {"id": state.config.model_name, "object": "model", "created": int(time.time()),
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
        return {"object": "list", "data": [_model_card(state)]}

    @app.get("/v1/models/{model:path}")
    async def get_model(model: str, request: Request) -> dict:
        state_of(request).model_name(model)
        return _model_card(state)

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(state.metrics.render(), media_type=CONTENT_TYPE_LATEST)

    @app.get("/", include_in_schema=False)
    async def page() -> Response:
        return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})
