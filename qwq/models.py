"""From a model name to a ready engine: resolve the name, open the checkpoint, build the
network, load weights, size the KV cache."""

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
from qwq.errors import CheckpointError, QwQError

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
        from qwq.weights.hub import resolve_hub_id
        return ResolvedModel(str(name), resolve_hub_id(text), _default_system(text))
    raise CheckpointError(f"model {text!r} not found: no such file or directory, and not a "
                          f"hub id (owner/name) or a known name ({DEMO_NAME}, "
                          f"{', '.join(PRESET_HUB_IDS)})")


def _default_system(name: str) -> str | None:
    """The system prompt a checkpoint's card asks for when a conversation has none."""
    return QWQ_PREVIEW_SYSTEM_PROMPT if "qwq-32b-preview" in name.lower() else None


def pick_device(device: str | None) -> torch.device:
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


def build_model(ckpt, dtype: torch.dtype, device: torch.device, block_scales: bool = False,
                stored: bool = False, int4: bool = False, head_mode: str | None = None):
    """The network with the checkpoint's weights, or an error and nothing half-built.
    block_scales: keep the grids of weights stored on one (AWQ) for a q5_0/q8_0 packing.
    stored: layers computed in the file's own block types (quantize="gguf"), views of it.
    int4: an AWQ directory or a GGUF as int4 layers from its own codes, tensor by tensor
    (quant.load_int4; head_mode: the head's format there, default int8)."""
    from qwq.model import Qwen2Model
    with torch.device("meta"):
        model = Qwen2Model(ckpt.config)
    if int4:
        from qwq.model.quant import load_int4
        load_int4(model, ckpt, dtype, device, head_mode)
        return model.eval()
    if stored:
        if device.type != "cpu":
            raise QwQError(f"quantize='gguf' runs on CPU; on {device.type} choose int8 or "
                           f"int4")
        model.load_stored(ckpt.stored, ckpt.load, dtype)
        return model.eval()
    # dtype first, on meta: allocating float32 and then converting held both copies
    model = model.to(dtype).to_empty(device=device)
    model.load_weights(ckpt.iter_tensors(dtype=dtype, block_scales=block_scales))
    return model.eval()


def num_kv_blocks(config: ModelConfig, engine: EngineConfig, dtype: torch.dtype,
                  device: torch.device, draft=None) -> int:
    """Blocks that fit engine.kv_cache_memory in engine.kv_cache_dtype (dtype: the model's);
    with a draft network, each block's draft slots too."""
    from qwq.model import KVCache
    from qwq.model.kv_quant import kv_storage_dtype
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


def load_engine(model: str | os.PathLike | None = None, *, dtype: str | torch.dtype = "auto",
                device: str | None = "auto", engine_config: EngineConfig | None = None,
                tensor_parallel_size: int = 1, exit_on_rank_failure: bool = False):
    """Everything needed to serve a model: (engine, tokenizer, resolved name). With
    tensor_parallel_size > 1 this process is rank 0 of that many (see qwq.distributed)."""
    from qwq.model.quant import QUANT_MODES
    from qwq.weights import open_checkpoint
    cfg = engine_config or EngineConfig()
    if cfg.quantize not in QUANT_MODES + ("auto",):
        raise CheckpointError(f"quantize={cfg.quantize!r} is not a known quantization; choose "
                              f"auto, {', '.join(QUANT_MODES)}")
    from qwq.reasoning.controls import REASONING_PARSERS
    if cfg.reasoning_parser not in REASONING_PARSERS:
        raise QwQError(f"reasoning_parser={cfg.reasoning_parser!r} is not known; choose "
                       f"{', '.join(REASONING_PARSERS)}")
    from qwq.model.kv_quant import kv_storage_dtype
    kv_storage_dtype(cfg.kv_cache_dtype, torch.bfloat16)  # a bad name fails before loading
    if tensor_parallel_size != 1:
        if cfg.speculative_model:
            raise QwQError("speculative_model does not run with tensor parallelism yet; "
                           "use one rank, or prompt lookup (speculative_ngram)")
        from qwq.distributed import load_tp_engine
        return load_tp_engine(model, dtype=dtype, device=device, engine_config=cfg,
                              tensor_parallel_size=tensor_parallel_size,
                              exit_on_rank_failure=exit_on_rank_failure)
    resolved = resolve(model)
    ckpt = open_checkpoint(resolved.path)
    tokenizer = _tokenizer_of(ckpt)
    dev = pick_device(device)
    torch_dtype = pick_dtype(dtype, ckpt.config, dev)
    if cfg.quantize == "auto":
        from qwq.model.quant import auto_quantization
        cfg = dataclasses.replace(cfg, quantize=auto_quantization(ckpt.weight_types(),
                                                                  torch_dtype, dev))
    torch_dtype = _int4_dtype(cfg.quantize, dtype, torch_dtype, dev)
    with heap.weights_in_own_mappings():
        # the draft first: a wrong one is refused before the big model is read
        draft = load_draft(cfg.speculative_model, tokenizer, dev) \
            if cfg.speculative_model else None
        net = build_model(ckpt, torch_dtype, dev,
                          block_scales=cfg.quantize in ("q5_0", "q8_0"),
                          stored=cfg.quantize == "gguf",
                          int4=_int4_from_codes(cfg.quantize, ckpt),
                          head_mode=cfg.head_quantize)
        engine = engine_for(net, tokenizer, cfg, ckpt.generation_config, draft=draft)
    return engine, tokenizer, resolved


def load_draft(name: str | os.PathLike, tokenizer, device: torch.device):
    """The draft network of speculative decoding, in its checkpoint's own format (quantize
    and dtype "auto"). It must share the model's tokenizer: its token ids are checked by the
    model as they are."""
    from qwq.model.quant import auto_quantization, quantize_model
    from qwq.weights import open_checkpoint
    resolved = resolve(name)
    ckpt = open_checkpoint(resolved.path)
    _check_same_vocabulary(_tokenizer_of(ckpt), tokenizer, str(name))
    dtype = pick_dtype("auto", ckpt.config, device)
    mode = auto_quantization(ckpt.weight_types(), dtype, device)
    dtype = _int4_dtype(mode, "auto", dtype, device)
    net = build_model(ckpt, dtype, device, block_scales=mode in ("q5_0", "q8_0"),
                      stored=mode == "gguf", int4=_int4_from_codes(mode, ckpt))
    return quantize_model(net, mode)


def _int4_from_codes(mode: str, ckpt) -> bool:
    from qwq.model.quant import int4_source
    return mode == "int4" and int4_source(ckpt)


def _int4_dtype(mode: str, asked, dtype: torch.dtype, device: torch.device) -> torch.dtype:
    """int4 on CUDA computes in bfloat16 (tinygemm takes no other); AWQ configs say float16,
    so "auto" becomes bfloat16 there, and an explicit float16 is refused by name."""
    if mode != "int4" or device.type != "cuda" or dtype == torch.bfloat16:
        return dtype
    if asked in (None, "auto"):
        return torch.bfloat16
    raise QwQError(f"quantize='int4' on CUDA runs in bfloat16 (torch's int4 kernel takes no "
                   f"other activation dtype); got dtype={asked!r}")


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
    """An engine over an already-built network (used by load_engine and by tests that run
    small random models). decode_graphs: None for CUDA graphs on CUDA as cfg.cuda_graphs says;
    True off CUDA runs their padded steps eagerly (tests). draft: the draft network of
    speculative decoding (load_draft), given with cfg.speculative_model."""
    from qwq.engine.draft import DraftRunner
    from qwq.engine.engine import LLMEngine
    from qwq.engine.runner import ModelRunner
    from qwq.model.quant import quantize_model

    dtype, dev = net.dtype, net.device
    # "auto" is settled by load_engine from the checkpoint; a bare network has none to ask
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
    from qwq.model.kv_quant import kv_storage_dtype
    blocks = num_kv_blocks(net.config, cfg, dtype, dev, draft)
    runner = ModelRunner(net, blocks, cfg.block_size,
                         kv_storage_dtype(cfg.kv_cache_dtype, dtype), dev,
                         decode_graphs=decode_graphs,
                         max_batch=cfg.max_num_seqs, max_model_len=max_len)
    if draft is not None:
        runner.draft = DraftRunner(draft, blocks, cfg.block_size,
                                   draft.dtype, dev, net.config.vocab_size)
    from qwq.reasoning.controls import ControlFactory
    return LLMEngine(runner, tokenizer, cfg, max_len,
                     generation_config,
                     ControlFactory.for_tokenizer(tokenizer, cfg.reasoning_parser))


# Tokenizers in use, by GGUF file state: a process that loads a model's tokenizer and
# then the model (or two engines on one checkpoint) holds one copy (~70 MB for Qwen's vocab).
_TOKENIZERS: weakref.WeakValueDictionary = weakref.WeakValueDictionary()


def _tokenizer_of(ckpt):
    from qwq.tokenizer import Tokenizer
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
    from qwq.weights import open_checkpoint
    resolved = resolve(model)
    return _tokenizer_of(open_checkpoint(resolved.path)), resolved
