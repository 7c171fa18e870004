import sys
from pathlib import Path

import pytest
import torch

from qwq.config import ModelConfig

# bench/'s scripts (random_gguf) for the tests; after site-packages, so that none of its
# names shadows an installed package
sys.path.append(str(Path(__file__).resolve().parents[1] / "bench"))


@pytest.fixture(scope="session")
def tiny_q4_k_m(tmp_path_factory):
    """A random-weight GGUF of a tiny Qwen2 in llama.cpp's Q4_K_M mix (bench/random_gguf.py)."""
    import random_gguf
    path = tmp_path_factory.mktemp("gguf") / "tiny-q4_k_m.gguf"
    random_gguf.write(path, "tiny", "q4_k_m")
    return path


@pytest.fixture(scope="session")
def tiny_q8_0(tmp_path_factory):
    """The same tiny Qwen2 in the Q8_0 mix (its o projection's records come in units of 128
    inputs, a kv group's attention output: a decode step's team makes them per group)."""
    import random_gguf
    path = tmp_path_factory.mktemp("gguf") / "tiny-q8_0.gguf"
    random_gguf.write(path, "tiny", "q8_0")
    return path


@pytest.fixture(scope="session")
def demo_gguf():
    from qwq.demo import demo_model_path
    return demo_model_path()


@pytest.fixture
def tiny_config() -> ModelConfig:
    """A tiny random Qwen2: 2 layers, hidden 64, GQA 4/2, q/k/v bias."""
    return ModelConfig(vocab_size=320, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=2, rms_norm_eps=1e-6,
                       rope_theta=10000.0, max_position_embeddings=512, torch_dtype="float32",
                       bos_token_id=1, eos_token_ids=(2,))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def tokenizer():
    """The demo model's (Qwen2.5's) tokenizer."""
    from qwq.models import load_tokenizer
    return load_tokenizer(None)[0]


@pytest.fixture(scope="session")
def net():
    """A tiny random Qwen2 over the real Qwen vocabulary (float32, weights ~N(0, 0.5))."""
    from qwq.model import Qwen2Model
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=151936, hidden_size=64, intermediate_size=128,
                      num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                      max_position_embeddings=1024, torch_dtype="float32")
    model = Qwen2Model(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.5)
    return model
