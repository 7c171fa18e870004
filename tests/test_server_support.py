"""Shared by the server tests (no tests here): a tiny random Qwen2 with the real Qwen
tokenizer, servers on loopback, and the check every server test ends with."""

from __future__ import annotations

import functools
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import openai
import torch

from qwq.config import EngineConfig, ModelConfig
from qwq.server import ServerConfig, create_app
from qwq.server.launch import BackgroundServer

TINY = ModelConfig(vocab_size=151936, hidden_size=64, intermediate_size=128,
                   num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                   max_position_embeddings=1024, torch_dtype="float32")
TINY_VERSION = "v1"


def _build_tiny_dir(out: Path) -> None:
    from qwq.models import load_tokenizer
    from qwq.weights import expected_shapes, save_safetensors_dir
    tok = load_tokenizer(None)[0]
    gen = torch.Generator().manual_seed(0)
    weights = {name: torch.randn(shape, generator=gen) * 0.5
               for name, shape in expected_shapes(TINY).items()}
    save_safetensors_dir(weights, TINY, out, dtype=torch.float32)
    tok.backend.save(str(out / "tokenizer.json"))
    (out / "tokenizer_config.json").write_text(json.dumps(
        {"eos_token": tok.eos_token, "pad_token": tok.pad_token,
         "chat_template": tok.chat_template}))


@functools.cache
def tiny_model_dir() -> Path:
    """A HF directory with a tiny random Qwen2 and the demo model's tokenizer: it loads in a
    second (the demo GGUF's tokenizer takes much longer), also in a `qwq serve` subprocess.
    Built once and kept in qwq's cache directory."""
    from qwq.demo import cache_dir
    final = cache_dir() / "tests" / f"tiny-qwen2-{TINY_VERSION}"
    if not (final / "config.json").exists():
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=final.parent))
        _build_tiny_dir(tmp)
        try:
            os.replace(tmp, final)
        except OSError:  # another process built it first
            shutil.rmtree(tmp, ignore_errors=True)
    return final


def tiny_engine(**config):
    from qwq.models import load_engine
    cfg = {"num_kv_blocks": 512, "block_size": 4, "max_model_len": 512, **config}
    engine, _, _ = load_engine(str(tiny_model_dir()), dtype="float32", device="cpu",
                               engine_config=EngineConfig(**cfg))
    return engine


@dataclass
class Stack:
    """A live server on loopback over an engine the test can inspect."""

    engine: object
    server: BackgroundServer
    api_key: str | None = None

    @property
    def url(self) -> str:
        return self.server.url

    @property
    def state(self):
        return self.server.app.state.qwq

    def client(self, api_key: str | None = None, **kw) -> openai.OpenAI:
        return openai.OpenAI(base_url=self.url + "/v1", api_key=api_key or self.api_key or "x",
                             max_retries=0, timeout=120, **kw)

    def settled(self, timeout: float = 15.0) -> None:
        """The engine is alive, no request is left, every KV block is free again."""
        engine, aeng = self.engine, self.state.aeng
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            idle = not engine.has_unfinished() and aeng.num_active() == 0
            if idle and engine.blocks.num_free == engine.blocks.num_blocks:
                break
            time.sleep(0.02)
        assert aeng.alive, f"the engine died: {aeng.error!r}"
        assert not engine.has_unfinished(), f"requests left: {list(engine.requests)}"
        assert aeng.num_active() == 0
        assert engine.blocks.num_free == engine.blocks.num_blocks, "KV blocks leaked"

    def close(self) -> None:
        self.server.stop()


def start_stack(engine=None, **config) -> Stack:
    engine = engine or tiny_engine()
    cfg = ServerConfig(**{"model_name": "tiny", **config})
    server = BackgroundServer(create_app(engine, cfg)).start()
    return Stack(engine, server, cfg.api_keys[0] if cfg.api_keys else None)


def served(make: Callable[[], Stack], settle_timeout: float = 15.0) -> tuple:
    """The two fixtures every server test module uses: `stack`, one live server for the module
    (built by make), and `_settled`, which checks after each test that the server is idle and
    every KV block is free. In a module: `stack, _settled = served(lambda: start_stack())`."""
    import pytest

    @pytest.fixture(scope="module")
    def stack():
        s = make()
        yield s
        s.close()

    @pytest.fixture(autouse=True)
    def _settled(stack):
        yield
        stack.settled(settle_timeout)

    return stack, _settled
