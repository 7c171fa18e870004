"""Shared by the tests of the other APIs (no tests here): the real demo model, loaded once per
test process and served on loopback by each module that needs it, and a switch that makes it a
think-style reasoning model for a test."""

from __future__ import annotations

import functools
from collections.abc import Iterator
from contextlib import contextmanager

from test_server_support import Stack, start_stack

from qwq.config import EngineConfig
from qwq.reasoning.controls import ControlFactory

KEY = "sk-apis"
MODEL = "qwq-demo"
WEATHER = {"name": "get_weather", "description": "Get the current weather in a city",
           "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                          "required": ["city"]}}


@functools.cache
def demo_engine():
    """The demo GGUF on the engine every server test module shares (one load per process)."""
    from qwq.models import load_engine
    engine, _, _ = load_engine(None, engine_config=EngineConfig(max_model_len=2048))
    return engine


def demo_stack(**config) -> Stack:
    return start_stack(demo_engine(), model_name=MODEL, api_keys=[KEY], **config)


@contextmanager
def thinking(stack: Stack) -> Iterator[None]:
    """Serve the demo model as a think-style reasoning model: everything before `</think>` is
    reasoning, and a thinking budget closes it with `</think>` (the demo never writes the tag
    itself, so a budget gives an answer of both parts)."""
    engine = stack.engine
    before = engine.control_factory
    engine.control_factory = ControlFactory.for_tokenizer(engine.tokenizer, "think")
    try:
        yield
    finally:
        engine.control_factory = before
