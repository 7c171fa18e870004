"""From a model name to a plan, and from a plan to a network and an engine.

`plan_load` settles everything once, for one rank and for tensor parallelism alike: the name
resolved to a checkpoint, the checkpoint opened, the device, the dtype and the weight format
(`quantize="auto"` decided here and only here), into a `LoadPlan`. `build_model` turns a plan's
checkpoint into a network (the whole one, or one rank's shard), `engine_for` puts an engine
over a network, `build_engine` does both for one rank. qwq.models.load_engine chooses between
`build_engine` and qwq.distributed.launch (N ranks), which consumes the same plan on each rank.
"""

from __future__ import annotations

import dataclasses
import os
import weakref
from dataclasses import dataclass
from pathlib import Path

import torch

from qwq import heap
from qwq.chat_template import QWQ_PREVIEW_SYSTEM_PROMPT
from qwq.config import EngineConfig, ModelConfig
from qwq.demo import DEMO_NAME, demo_model_path
from qwq.distributed.group import TPGroup
from qwq.distributed.shard import TensorParallelQwen2, check_tp_size, shard_tensors
from qwq.engine.draft import DraftRunner
from qwq.engine.engine import LLMEngine
from qwq.engine.runner import ModelRunner
from qwq.errors import CheckpointError, QwQError
from qwq.model import KVCache, Qwen2Model
from qwq.model.kv_quant import kv_storage_dtype
from qwq.model.quant import QUANT_MODES, auto_quantization, int4_source, load_int4, quantize_model
from qwq.reasoning.controls import REASONING_PARSERS, ControlFactory
from qwq.tokenizer import Tokenizer
from qwq.weights import open_checkpoint
from qwq.weights.checkpoint import Checkpoint
from qwq.weights.hub import resolve_hub_id

# Names a user can type instead of a path; hub ids fetched through huggingface_hub.
PRESET_HUB_IDS = {"qwq-32b-preview": "Qwen/QwQ-32B-Preview"}

DTYPES = {"float32": torch.float32, "fp32": torch.float32, "float": torch.float32,
          "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
          "float16": torch.float16, "fp16": torch.float16, "half": torch.float16}


@dataclass
class ResolvedModel:
    name: str  # what the user asked for, as served in /v1/models
    path: Path
    default_system: str | None = None


def resolve(name: str | os.PathLike | None) -> ResolvedModel:
    """None or 'qwq-demo': the built-in demo; a local dir or .gguf; a preset; a hub id."""
    if name is None or str(name) == DEMO_NAME:
        return ResolvedModel(DEMO_NAME, demo_model_path())
    text = str(name)
    path = Path(text).expanduser()
    if path.exists():
        return ResolvedModel(text, path, _default_system(text))
    if text.lower() in PRESET_HUB_IDS:
        text = PRESET_HUB_IDS[text.lower()]
    if text.count("/") == 1 and not text.startswith((".", "/", "~")) and not path.suffix:
        return ResolvedModel(str(name), resolve_hub_id(text), _default_system(text))
    raise CheckpointError(f"model {text!r} not found: no such file or directory, and not a "
                          f"hub id (owner/name) or a known name ({DEMO_NAME}, "
                          f"{', '.join(PRESET_HUB_IDS)})")


def _default_system(name: str) -> str | None:
    """The system prompt a checkpoint's card asks for when a conversation has none."""
    return QWQ_PREVIEW_SYSTEM_PROMPT if "qwq-32b-preview" in name.lower() else None


def pick_device(device: str | torch.device | None) -> torch.device:
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def pick_dtype(dtype: str | torch.dtype | None, config: ModelConfig,
               device: torch.device) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype in (None, "auto"):
        wanted = DTYPES.get(config.torch_dtype, torch.bfloat16)
        # fp16 matmuls are slow on CPUs; bf16 is what they accelerate
        return torch.bfloat16 if device.type == "cpu" and wanted == torch.float16 else wanted
    if dtype not in DTYPES:
        raise CheckpointError(f"dtype {dtype!r} is not supported; use one of "
                              f"auto, {', '.join(sorted(DTYPES))}")
    return DTYPES[dtype]


def check_engine_config(cfg: EngineConfig, tensor_parallel_size: int = 1) -> EngineConfig:
    """Refuse unknown names (and what tensor parallelism does not run) before anything loads."""
    if cfg.quantize not in QUANT_MODES + ("auto",):
        raise CheckpointError(f"quantize={cfg.quantize!r} is not a known quantization; choose "
                              f"auto, {', '.join(QUANT_MODES)}")
    if cfg.reasoning_parser not in REASONING_PARSERS:
        raise QwQError(f"reasoning_parser={cfg.reasoning_parser!r} is not known; choose "
                       f"{', '.join(REASONING_PARSERS)}")
    kv_storage_dtype(cfg.kv_cache_dtype, torch.bfloat16)  # a bad name fails before loading
    if tensor_parallel_size != 1 and cfg.speculative_model:
        raise QwQError("speculative_model does not run with tensor parallelism yet; "
                       "use one rank, or prompt lookup (speculative_ngram)")
    return cfg


@dataclass
class LoadPlan:
    """What to load and how, settled: the checkpoint (open), the device (a rank's own under
    tensor parallelism), the dtype, and the engine config with its weight format decided
    (engine_config.quantize is never "auto" here)."""

    resolved: ResolvedModel
    ckpt: Checkpoint
    device: torch.device
    dtype: torch.dtype
    engine_config: EngineConfig
    tensor_parallel_size: int = 1

    @property
    def quantize(self) -> str:
        return self.engine_config.quantize

    @property
    def block_scales(self) -> bool:
        """Keep the grids of weights stored on one (AWQ) for a q5_0/q8_0 packing."""
        return self.quantize in ("q5_0", "q8_0")

    @property
    def stored(self) -> bool:
        """Layers computed in the file's own block types (quantize="gguf")."""
        return self.quantize == "gguf"

    @property
    def int4_codes(self) -> bool:
        """int4 layers from the checkpoint's own 4-bit codes (AWQ, a 4-bit GGUF), one rank."""
        return self.quantize == "int4" and self.tensor_parallel_size == 1 \
            and int4_source(self.ckpt)

    def tokenizer(self) -> Tokenizer:
        return tokenizer_of(self.ckpt)


def plan_load(model: str | os.PathLike | ResolvedModel | None, *, dtype: str | torch.dtype = "auto",
              device: str | torch.device | None = "auto",
              engine_config: EngineConfig | None = None,
              tensor_parallel_size: int = 1) -> LoadPlan:
    """Resolve the name, open the checkpoint and settle device, dtype and format. With
    tensor_parallel_size > 1, device is this rank's and the format is one a rank's float
    slices are packed into (no GGUF-native layers)."""
    cfg = check_engine_config(engine_config or EngineConfig(), tensor_parallel_size)
    resolved = model if isinstance(model, ResolvedModel) else resolve(model)
    ckpt = open_checkpoint(resolved.path)
    if tensor_parallel_size != 1:
        check_tp_size(ckpt.config, tensor_parallel_size)
    dev = pick_device(device)
    torch_dtype = pick_dtype(dtype, ckpt.config, dev)
    if cfg.quantize == "auto":
        cfg = dataclasses.replace(cfg, quantize=auto_quantization(
            ckpt.weight_types(), torch_dtype, dev, sharded=tensor_parallel_size != 1))
    torch_dtype = _int4_dtype(cfg.quantize, dtype, torch_dtype, dev)
    return LoadPlan(resolved, ckpt, dev, torch_dtype, cfg, tensor_parallel_size)


def build_model(ckpt, dtype: torch.dtype, device: torch.device, block_scales: bool = False,
                stored: bool = False, tp: TPGroup | None = None, int4: bool = False,
                head_mode: str | None = None):
    """The network with the checkpoint's weights, or an error and nothing half-built.
    block_scales: keep the grids of weights stored on one (AWQ) for a q5_0/q8_0 packing.
    stored: layers computed in the file's own block types (quantize="gguf"), views of it.
    tp: this rank's shard (TensorParallelQwen2) on tp.device, only its slices read from the
    file, as floats (block_scales, stored and int4 do not apply).
    int4: an AWQ directory or a GGUF as int4 layers from its own codes, tensor by tensor
    (quant.load_int4; head_mode: the head's format there, default int8)."""
    with torch.device("meta"):
        model = Qwen2Model(ckpt.config) if tp is None else TensorParallelQwen2(ckpt.config, tp)
    if tp is not None:
        device, tensors = tp.device, shard_tensors(ckpt, tp.rank, tp.size, dtype)
    elif int4:
        load_int4(model, ckpt, dtype, device, head_mode)
        return model.eval()
    elif stored:
        if device.type != "cpu":
            raise QwQError(f"quantize='gguf' runs on CPU; on {device.type} choose int8 or "
                           f"int4")
        model.load_stored(ckpt.stored, ckpt.load, dtype)
        return model.eval()
    else:
        tensors = ckpt.iter_tensors(dtype=dtype, block_scales=block_scales)
    # dtype first, on meta: allocating float32 and then converting held both copies
    model = model.to(dtype).to_empty(device=device)
    model.load_weights(tensors)
    return model.eval()


def build_network(plan: LoadPlan, tp: TPGroup | None = None):
    """The plan's network (this rank's shard with tp), not yet quantized."""
    return build_model(plan.ckpt, plan.dtype, plan.device, block_scales=plan.block_scales,
                       stored=plan.stored, tp=tp, int4=plan.int4_codes,
                       head_mode=plan.engine_config.head_quantize)


def _int4_dtype(mode: str, asked, dtype: torch.dtype, device: torch.device) -> torch.dtype:
    """int4 on CUDA computes in bfloat16 (tinygemm takes no other); AWQ configs say float16,
    so "auto" becomes bfloat16 there, and an explicit float16 is refused by name."""
    if mode != "int4" or device.type != "cuda" or dtype == torch.bfloat16:
        return dtype
    if asked in (None, "auto"):
        return torch.bfloat16
    raise QwQError(f"quantize='int4' on CUDA runs in bfloat16 (torch's int4 kernel takes no "
                   f"other activation dtype); got dtype={asked!r}")


def num_kv_blocks(config: ModelConfig, engine: EngineConfig, dtype: torch.dtype,
                  device: torch.device, draft=None) -> int:
    """Blocks that fit engine.kv_cache_memory in engine.kv_cache_dtype (dtype: the model's);
    with a draft network, each block's draft slots too."""
    per_block = KVCache.bytes_per_block(config.num_hidden_layers, engine.block_size,
                                        config.num_key_value_heads, config.head_dim,
                                        kv_storage_dtype(engine.kv_cache_dtype, dtype))
    if draft is not None:
        d = draft.config
        per_block += KVCache.bytes_per_block(d.num_hidden_layers, engine.block_size,
                                             d.num_key_value_heads, d.head_dim, draft.dtype)
    if engine.num_kv_blocks:
        return engine.num_kv_blocks
    budget = engine.kv_cache_memory
    if budget is None:
        budget = int(torch.cuda.mem_get_info(device)[0] * 0.85) if device.type == "cuda" \
            else 1 << 30
    return max(2, budget // per_block)


def build_engine(plan: LoadPlan):
    """One rank: (engine, tokenizer) from a plan."""
    cfg = plan.engine_config
    tokenizer = plan.tokenizer()
    with heap.weights_in_own_mappings():
        # the draft first: a wrong one is refused before the big model is read
        draft = load_draft(cfg.speculative_model, tokenizer, plan.device) \
            if cfg.speculative_model else None
        net = build_network(plan)
        engine = engine_for(net, tokenizer, cfg, plan.ckpt.generation_config, draft=draft)
    return engine, tokenizer


def load_draft(name: str | os.PathLike, tokenizer, device: torch.device):
    """The draft network of speculative decoding, in its checkpoint's own format (quantize
    and dtype "auto"). It must share the model's tokenizer: its token ids are checked by the
    model as they are."""
    plan = plan_load(name, device=device)
    _check_same_vocabulary(plan.tokenizer(), tokenizer, str(name))
    return quantize_model(build_network(plan), plan.quantize)


def _check_same_vocabulary(draft, target, name: str) -> None:
    if draft.vocab_size != target.vocab_size:
        why = f"{draft.vocab_size} tokens against the model's {target.vocab_size}"
    elif draft.backend.get_vocab(with_added_tokens=True) != \
            target.backend.get_vocab(with_added_tokens=True):
        why = "the same number of tokens, but not the same tokens"
    else:
        return
    raise CheckpointError(f"speculative_model {name!r} has another vocabulary than the model "
                          f"({why}); a draft must share the model's tokenizer (for QwQ-32B: "
                          "Qwen2.5-0.5B-Instruct)")


def engine_for(net, tokenizer, cfg: EngineConfig, generation_config: dict | None = None, *,
               decode_graphs: bool | None = None, draft=None):
    """An engine over an already-built network (used by build_engine, by rank 0 of a
    tensor-parallel engine and by tests that run small random models). decode_graphs: None
    for CUDA graphs on CUDA as cfg.cuda_graphs says; True off CUDA runs their padded steps
    eagerly (tests). draft: the draft network of speculative decoding (load_draft), given
    with cfg.speculative_model."""
    dtype, dev = net.dtype, net.device
    # "auto" is settled by plan_load from the checkpoint; a bare network has none to ask
    quantize_model(net, "none" if cfg.quantize == "auto" else cfg.quantize, cfg.head_quantize)
    if cfg.max_num_batched_tokens is None:
        cfg = dataclasses.replace(cfg, max_num_batched_tokens=512 if dev.type == "cpu" else 2048)
    ctx = net.config.context_length
    if (draft is None) != (not cfg.speculative_model):
        raise QwQError("a draft network goes with speculative_model, and only with it")
    if draft is not None:
        ctx = min(ctx, draft.config.context_length)
    max_len = min(cfg.max_model_len or ctx, ctx)
    if decode_graphs is None:
        decode_graphs = cfg.cuda_graphs and dev.type == "cuda"
    blocks = num_kv_blocks(net.config, cfg, dtype, dev, draft)
    runner = ModelRunner(net, blocks, cfg.block_size,
                         kv_storage_dtype(cfg.kv_cache_dtype, dtype), dev,
                         decode_graphs=decode_graphs,
                         max_batch=cfg.max_num_seqs, max_model_len=max_len)
    if draft is not None:
        runner.draft = DraftRunner(draft, blocks, cfg.block_size,
                                   draft.dtype, dev, net.config.vocab_size)
    return LLMEngine(runner, tokenizer, cfg, max_len,
                     generation_config,
                     ControlFactory.for_tokenizer(tokenizer, cfg.reasoning_parser))


# Tokenizers in use, by GGUF file state: a process that loads a model's tokenizer and
# then the model (or two engines on one checkpoint) holds one copy (~70 MB for Qwen's vocab).
_TOKENIZERS: weakref.WeakValueDictionary = weakref.WeakValueDictionary()


def tokenizer_of(ckpt) -> Tokenizer:
    """The checkpoint's tokenizer (a GGUF's from its metadata, else tokenizer.json)."""
    key = None
    if ckpt.format == "gguf":  # one file: its state says whether the tokenizer is the same
        try:
            stat = ckpt.path.stat()
            key = (str(ckpt.path.resolve()), stat.st_mtime_ns, stat.st_size)
        except OSError:
            pass
    tok = _TOKENIZERS.get(key) if key else None
    if tok is None:
        tok = Tokenizer.from_gguf(ckpt.gguf_metadata()) if ckpt.format == "gguf" \
            else Tokenizer.from_dir(ckpt.path)
        if key:
            _TOKENIZERS[key] = tok
    return tok


def load_tokenizer(model: str | os.PathLike | None = None):
    """The tokenizer alone: (tokenizer, resolved name)."""
    resolved = resolve(model)
    return tokenizer_of(open_checkpoint(resolved.path)), resolved
