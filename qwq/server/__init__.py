"""qwq's OpenAI-compatible server: `qwq serve`, or create_app(engine, ServerConfig(...))."""

from qwq.server.app import create_app
from qwq.server.state import ServerConfig

__all__ = ["ServerConfig", "create_app"]
