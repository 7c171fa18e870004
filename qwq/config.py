"""Model and engine configuration: from config.json, from GGUF metadata, or from a preset."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from qwq.errors import CheckpointError

SUPPORTED_ARCHITECTURES = ("Qwen2ForCausalLM",)


@dataclass(frozen=True)
class ModelConfig:
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    rms_norm_eps: float = 1e-6
    rope_theta: float = 1_000_000.0
    max_position_embeddings: int = 32768
    tie_word_embeddings: bool = False
    rope_scaling: dict[str, Any] | None = None
    bos_token_id: int | None = 151643
    eos_token_ids: tuple[int, ...] = (151645,)
    torch_dtype: str = "bfloat16"
    head_dim: int = 0  # 0 means hidden_size // num_attention_heads

    def __post_init__(self) -> None:
        if self.head_dim == 0:
            object.__setattr__(self, "head_dim", self.hidden_size // self.num_attention_heads)
        for name in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                     "num_attention_heads", "num_key_value_heads", "max_position_embeddings"):
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0 or value > 1 << 24:
                raise CheckpointError(f"config field {name}={value!r} is not a sane positive integer")
        if self.num_attention_heads % self.num_key_value_heads:
            raise CheckpointError(
                f"num_attention_heads={self.num_attention_heads} is not a multiple of "
                f"num_key_value_heads={self.num_key_value_heads}")

    @property
    def context_length(self) -> int:
        """Longest sequence the model serves, YaRN scaling included."""
        rs = self.rope_scaling or {}
        if rs.get("type", rs.get("rope_type")) == "yarn":
            orig = int(rs.get("original_max_position_embeddings", self.max_position_embeddings))
            return int(orig * float(rs.get("factor", 1.0)))
        return self.max_position_embeddings

    @classmethod
    def from_hf_dict(cls, d: dict[str, Any], source: str = "config.json") -> ModelConfig:
        archs = d.get("architectures") or []
        model_type = d.get("model_type")
        if model_type != "qwen2" and not any(a in SUPPORTED_ARCHITECTURES for a in archs):
            raise CheckpointError(
                f"{source}: architecture {archs or model_type!r} is not supported; qwq runs "
                f"{', '.join(SUPPORTED_ARCHITECTURES)} (model_type 'qwen2': QwQ-32B-Preview, "
                "Qwen2, Qwen2.5 and their fine-tunes)")
        eos = d.get("eos_token_id", 151645)
        eos_ids = tuple(eos) if isinstance(eos, list) else ((eos,) if eos is not None else ())
        try:
            return cls(
                vocab_size=d["vocab_size"],
                hidden_size=d["hidden_size"],
                intermediate_size=d["intermediate_size"],
                num_hidden_layers=d["num_hidden_layers"],
                num_attention_heads=d["num_attention_heads"],
                num_key_value_heads=d.get("num_key_value_heads", d["num_attention_heads"]),
                rms_norm_eps=float(d.get("rms_norm_eps", 1e-6)),
                rope_theta=float(d.get("rope_theta", 10000.0)),
                max_position_embeddings=d.get("max_position_embeddings", 32768),
                tie_word_embeddings=bool(d.get("tie_word_embeddings", False)),
                rope_scaling=d.get("rope_scaling"),
                bos_token_id=d.get("bos_token_id"),
                eos_token_ids=eos_ids,
                torch_dtype=str(d.get("torch_dtype") or d.get("dtype") or "bfloat16"),
                head_dim=int(d.get("head_dim") or 0),
            )
        except KeyError as e:
            raise CheckpointError(f"{source}: required field {e.args[0]!r} is missing") from None

    def to_hf_dict(self) -> dict[str, Any]:
        """The config.json a transformers Qwen2ForCausalLM would be built from."""
        d = dataclasses.asdict(self)
        d["eos_token_id"] = list(d.pop("eos_token_ids"))
        if len(d["eos_token_id"]) == 1:
            d["eos_token_id"] = d["eos_token_id"][0]
        d["architectures"] = ["Qwen2ForCausalLM"]
        d["model_type"] = "qwen2"
        return d

    def replace(self, **changes: Any) -> ModelConfig:
        return dataclasses.replace(self, **changes)


PRESETS: dict[str, ModelConfig] = {
    "qwq-32b-preview": ModelConfig(
        vocab_size=152064, hidden_size=5120, intermediate_size=27648, num_hidden_layers=64,
        num_attention_heads=40, num_key_value_heads=8, rms_norm_eps=1e-5, rope_theta=1e6,
        max_position_embeddings=32768, tie_word_embeddings=False, torch_dtype="bfloat16"),
    "qwq-demo": ModelConfig(
        vocab_size=151936, hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
        num_attention_heads=14, num_key_value_heads=2, rms_norm_eps=1e-6, rope_theta=1e6,
        max_position_embeddings=32768, tie_word_embeddings=False, torch_dtype="bfloat16"),
}


@dataclass
class EngineConfig:
    """How the engine spends memory and compute. Defaults suit one CPU machine."""

    block_size: int = 16
    num_kv_blocks: int | None = None  # None: sized from kv_cache_memory
    kv_cache_memory: int | None = None  # bytes; None: 1 GiB on CPU, 85% of free GPU memory
    max_num_seqs: int = 64  # sequences that run in one step
    # token budget of one step (prefill chunks + decodes); None: 512 on CPU (faster there than
    # bigger chunks, and a quarter of the activation memory), 2048 on GPU
    max_num_batched_tokens: int | None = None
    # most prefill tokens one sequence takes in a step that others share, so a long prompt
    # never holds up short ones (vLLM's name); None: a quarter of the step budget, 0: no cap
    long_prefill_token_threshold: int | None = None
    max_model_len: int | None = None  # None: the model's context length
    max_waiting: int = 1024  # bounded waiting queue
    enable_prefix_caching: bool = True
    dtype: str = "auto"
    # the KV cache's storage: auto (the model's dtype), bfloat16, int8 or fp8 (8-bit codes with a
    # scale per token and KV head: half the memory of 16 bits, so twice the tokens fit)
    kv_cache_dtype: str = "auto"
    quantize: str = "auto"  # auto: from the checkpoint (GGUF types); none, int8, w8a8, int4
    head_quantize: str | None = None  # the output head's format; None: as quantize
    # how answers split into reasoning and content, and which marker closes the reasoning:
    # auto (from the chat template), think (<think>...</think>), plain (QwQ-32B-Preview's
    # **Final Answer**), none (not a reasoning model)
    reasoning_parser: str = "auto"
    device: str = "cpu"
    # on CUDA, decode steps replay CUDA graphs (qwq.engine.graphs); False runs them eagerly
    cuda_graphs: bool = True
    # prompt-lookup speculative decoding: draft tokens per step (0: off), n-gram sizes matched
    speculative_ngram: int = 0
    prompt_lookup_min: int = 2
    prompt_lookup_max: int = 4
    # speculative decoding with a draft model sharing the tokenizer (a name as for the model:
    # Qwen2.5-0.5B for QwQ-32B), proposing num_speculative_tokens a step; with prompt lookup
    # on too, each step takes whichever drafts more
    speculative_model: str | None = None
    num_speculative_tokens: int = 4
    extra: dict[str, Any] = field(default_factory=dict)
