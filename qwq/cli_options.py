"""The command-line options `qwq generate/chat/serve/eval` share, and loading the model they
name. A leaf of the surfaces: qwq.cli, qwq.eval.cli and qwq.server.launch import it, it
imports none of them."""

from __future__ import annotations

import argparse
import sys

from qwq.llm import LLM
from qwq.model.kv_quant import KV_CACHE_DTYPES
from qwq.model.quant import QUANT_MODES


def add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", "-m", default=None,
                   help="a HF directory, a .gguf file, a hub id, qwq-32b-preview or qwq-demo "
                        "(default: the built-in demo model)")
    p.add_argument("--dtype", default="auto", help="auto, bfloat16, float16, float32")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    p.add_argument("--max-model-len", type=int, default=None, help="cap the context length")
    p.add_argument("--quantize", "-q", default="auto",
                   choices=["auto", *QUANT_MODES],
                   help="weight format: auto (from the checkpoint: a GGUF on CPU as shipped, "
                        "each tensor in its own block type; int8 on GPU; an AWQ directory as "
                        "q5_0; float checkpoints stay float), gguf (as shipped), q5_0 / q8_0 "
                        "(GGUF's blocks of 32 repacked, int8 "
                        "activation blocks; q5_0 keeps a q8_0 head), int8 (weights only), w8a8 "
                        "(int8 weights and per-token int8 activations), int4 (groups of 128)")
    add_kv_cache_arg(p)
    p.add_argument("--reasoning-parser", default="auto",
                   choices=["auto", "think", "plain", "none"],
                   help="how answers split into reasoning and content: auto (from the chat "
                        "template), think (<think> tags), plain (QwQ-32B-Preview's **Final "
                        "Answer**), none")
    p.add_argument("--speculative-ngram", type=int, default=0, metavar="K",
                   help="prompt-lookup speculative decoding: draft up to K tokens a step from "
                        "earlier text (0: off; greedy output is unchanged)")
    p.add_argument("--speculative-model", default=None, metavar="MODEL",
                   help="speculative decoding with a draft model that shares the tokenizer "
                        "(a name as for --model; Qwen2.5-0.5B for QwQ-32B): it proposes "
                        "tokens the model checks in one forward (output unchanged)")
    p.add_argument("--num-speculative-tokens", type=int, default=4, metavar="K",
                   help="tokens the draft model proposes a step (default 4)")
    p.add_argument("--enforce-eager", action="store_true",
                   help="on CUDA, launch decode steps kernel by kernel instead of replaying "
                        "CUDA graphs")
    p.add_argument("--tensor-parallel-size", "--tp", type=int, default=1, metavar="N",
                   help="split the model over N ranks (GPUs, or CPU processes with gloo); "
                        "under torchrun, N must equal WORLD_SIZE")


def add_kv_cache_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--kv-cache-dtype", default="auto", choices=KV_CACHE_DTYPES,
                   help="KV cache storage: auto (the model's dtype), bfloat16, int8 (CPU) or "
                        "fp8 (GPU): 8-bit codes with a scale per token and KV head, half the "
                        "memory, twice the tokens")


def engine_options(args: argparse.Namespace) -> dict:
    """The EngineConfig fields that add_model_args sets (generate, chat, serve, eval)."""
    return {"max_model_len": args.max_model_len, "quantize": args.quantize,
            "kv_cache_dtype": args.kv_cache_dtype,
            "speculative_ngram": args.speculative_ngram,
            "speculative_model": args.speculative_model,
            "num_speculative_tokens": args.num_speculative_tokens,
            "reasoning_parser": args.reasoning_parser, "cuda_graphs": not args.enforce_eager}


def load_llm(args: argparse.Namespace) -> LLM:
    print(f"loading {args.model or 'qwq-demo'} ...", file=sys.stderr, flush=True)
    return LLM(args.model, dtype=args.dtype, device=args.device,
               tensor_parallel_size=args.tensor_parallel_size, **engine_options(args))
