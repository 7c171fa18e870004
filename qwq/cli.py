"""qwq's command line: generate, chat, serve, eval, plan."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from qwq.benchmark.cli import add_parser as add_bench_parser
from qwq.cli_options import add_kv_cache_arg, add_model_args, engine_options, load_llm
from qwq.config import PRESETS
from qwq.errors import QwQError
from qwq.eval.cli import add_eval_parser
from qwq.model.quant import QUANT_MODES
from qwq.models import resolve
from qwq.plan import PLAN_SETUPS, describe, parse_size, plan
from qwq.reasoning.options import add_reasoning_args, reasoning_fields
from qwq.sampling_params import SamplingParams
from qwq.weights import open_checkpoint

__all__ = ["add_kv_cache_arg", "add_model_args", "build_parser", "engine_options", "load_llm",
           "main"]


def add_sampling_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("sampling (unset: the checkpoint's generation_config)")
    g.add_argument("--temperature", "-t", type=float, default=None, help="0 means greedy")
    g.add_argument("--top-p", type=float, default=None)
    g.add_argument("--top-k", type=int, default=None)
    g.add_argument("--min-p", type=float, default=None)
    g.add_argument("--repetition-penalty", type=float, default=None)
    g.add_argument("--presence-penalty", type=float, default=0.0)
    g.add_argument("--frequency-penalty", type=float, default=0.0)
    g.add_argument("--seed", type=int, default=None)
    g.add_argument("--stop", action="append", default=None, help="stop string (repeatable)")
    g.add_argument("--max-new-tokens", type=int, default=512)
    add_reasoning_args(p)


def sampling_params(args: argparse.Namespace) -> SamplingParams:
    return SamplingParams(
        temperature=args.temperature, top_p=args.top_p, top_k=args.top_k, min_p=args.min_p,
        repetition_penalty=args.repetition_penalty, presence_penalty=args.presence_penalty,
        frequency_penalty=args.frequency_penalty, seed=args.seed, stop=args.stop,
        max_tokens=args.max_new_tokens, **reasoning_fields(args))


def stream_answer(llm, prompt_ids: list[int], params, out=sys.stdout) -> str:
    text = ""
    for chunk in llm.stream(prompt_ids, params):
        piece = chunk.outputs[0].delta_text
        text += piece
        out.write(piece)
        out.flush()
        if chunk.finished and chunk.outputs[0].error:
            raise QwQError(chunk.outputs[0].error)
    out.write("\n")
    return text


def cmd_generate(args: argparse.Namespace) -> int:
    params = sampling_params(args)  # bad values fail before the model loads
    llm = load_llm(args)
    if args.raw:
        ids = llm.tokenizer.encode(args.prompt, allow_special=True)
    else:
        msgs = ([{"role": "system", "content": args.system}] if args.system else [])
        ids = llm.encode_chat(msgs + [{"role": "user", "content": args.prompt}])
    stream_answer(llm, ids, params)
    return 0


def cmd_chat(args: argparse.Namespace) -> int:
    params = sampling_params(args)
    llm = load_llm(args)
    history: list[dict[str, Any]] = ([{"role": "system", "content": args.system}]
                                     if args.system else [])
    print("chat with the model; /reset clears the conversation, /exit or Ctrl-D quits",
          file=sys.stderr)
    while True:
        try:
            line = input(">>> ")
        except (EOFError, KeyboardInterrupt):
            print(file=sys.stderr)
            return 0
        if line.strip() in ("/exit", "/quit"):
            return 0
        if line.strip() == "/reset":
            history = history[:1] if args.system else []
            continue
        if not line.strip():
            continue
        history.append({"role": "user", "content": line})
        try:
            answer = stream_answer(llm, llm.encode_chat(history), params)
        except KeyboardInterrupt:
            print("\n[interrupted]", file=sys.stderr)
            history.pop()
            continue
        history.append({"role": "assistant", "content": answer})


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="qwq", description="Run QwQ and Qwen2 models.")
    sub = parser.add_subparsers(dest="command", required=True)
    gen = sub.add_parser("generate", help="answer one prompt, streaming")
    gen.add_argument("prompt")
    gen.add_argument("--system", default=None, help="system prompt")
    gen.add_argument("--raw", action="store_true",
                     help="send the prompt as is, without the chat template")
    chat = sub.add_parser("chat", help="interactive chat, streaming")
    chat.add_argument("--system", default=None, help="system prompt")
    for p in (gen, chat):
        add_model_args(p)
        add_sampling_args(p)
    gen.set_defaults(func=cmd_generate)
    chat.set_defaults(func=cmd_chat)
    serve = sub.add_parser("serve", help="OpenAI-compatible server with a chat page at /")
    add_model_args(serve)
    add_serve_args(serve)
    serve.set_defaults(func=cmd_serve)
    add_eval_parser(sub, add_model_args)
    pl = sub.add_parser("plan", help="memory plan from a config: weights, KV tokens, sequences")
    pl.add_argument("--model", "-m", default="qwq-32b-preview",
                    help="a preset (qwq-32b-preview, qwq-demo) or a checkpoint")
    pl.add_argument("--gpus", type=int, default=1)
    pl.add_argument("--gpu-memory", default="80GB", help="per GPU, e.g. 80GB, 141GB, 24GB")
    pl.add_argument("--quantize", default="none",
                    choices=[m for m in QUANT_MODES if m != "gguf"] + list(PLAN_SETUPS),
                    help="a quantize mode, or a 4-bit checkpoint on a GPU: awq (AWQ's int4 "
                         "codes), q4_k_m (a 4-bit GGUF as int4 at groups of 32)")
    pl.add_argument("--context", type=int, default=None, help="tokens per sequence")
    add_kv_cache_arg(pl)
    pl.set_defaults(func=cmd_plan)
    add_bench_parser(sub)
    return parser


def cmd_plan(args: argparse.Namespace) -> int:
    if args.model in PRESETS:
        cfg = PRESETS[args.model]
    else:
        cfg = open_checkpoint(resolve(args.model).path).config
    try:
        memory = parse_size(args.gpu_memory)
    except (ValueError, IndexError):
        raise QwQError(f"--gpu-memory {args.gpu_memory!r} is not a size like 80GB") from None
    print(describe(plan(cfg, args.gpus, memory, args.quantize, args.context,
                        kv_cache_dtype=args.kv_cache_dtype), args.gpus, args.quantize))
    return 0


def add_serve_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--api-key", action="append", default=None,
                   help="require this key on every route but /health (repeatable, one tenant "
                        "per key; default: $QWQ_API_KEY)")
    p.add_argument("--price-input", type=float, default=0.0, help="price per prompt token")
    p.add_argument("--price-output", type=float, default=0.0, help="price per generated token")
    p.add_argument("--max-waiting", type=int, default=1024,
                   help="requests that may wait; beyond that, 429 with Retry-After")
    p.add_argument("--drain-timeout", type=float, default=30.0,
                   help="seconds SIGTERM waits for open requests")
    p.add_argument("--served-model-name", nargs="+", default=None, metavar="NAME",
                   help="the names the model answers to (/v1/models lists them all); "
                        "default: --model's")
    p.add_argument("--chat-template", default=None, metavar="FILE_OR_TEMPLATE",
                   help="a Jinja chat template (a file, or the text) instead of the "
                        "checkpoint's")
    p.add_argument("--guard-file", default=None,
                   help="JSON or YAML file of guard policies that requests may name in `guard`")
    g = p.add_argument_group("engine capacity")
    g.add_argument("--kv-cache-memory", type=_size, default=None, metavar="SIZE",
                   help="memory for the KV cache, e.g. 512MiB, 2GB (default: 1 GiB on CPU, "
                        "85%% of free GPU memory); less memory, more preemption")
    g.add_argument("--num-kv-blocks", type=int, default=None, metavar="N",
                   help="KV-cache blocks (of 16 tokens); overrides --kv-cache-memory")
    g.add_argument("--max-num-seqs", type=int, default=64, help="sequences run in one step")
    g.add_argument("--max-num-batched-tokens", type=int, default=None, metavar="N",
                   help="tokens one step computes (default: 512 on CPU, 2048 on GPU)")
    g.add_argument("--long-prefill-token-threshold", type=int, default=None, metavar="N",
                   help="most prompt tokens one request computes in a step others share, so "
                        "a long prompt never stalls short ones (default: a quarter of "
                        "--max-num-batched-tokens; 0: no cap)")
    c = p.add_argument_group("connections")
    c.add_argument("--max-connections", type=int, default=1024,
                   help="connections open at once; more get 503 with Retry-After")
    c.add_argument("--header-timeout", type=float, default=10.0, metavar="SECONDS",
                   help="a request's headers must arrive within this, else 408 and close")
    c.add_argument("--body-timeout", type=float, default=30.0, metavar="SECONDS",
                   help="its body must arrive within this after them, else 408 and close")
    c.add_argument("--max-body-size", type=_size, default=4 << 20, metavar="SIZE",
                   help="larger request bodies get 413 before they are read (default 4MiB)")


def _size(text: str) -> int:
    """A byte count for argparse: 512MiB, 2GB, 1048576."""
    try:
        return int(parse_size(text))
    except (ValueError, KeyError, IndexError):
        raise argparse.ArgumentTypeError(f"{text!r} is not a size like 512MiB or 2GB") from None


def cmd_serve(args: argparse.Namespace) -> int:
    # lazy: fastapi, uvicorn and the server's modules load only for `qwq serve`
    from qwq.server.launch import cmd_serve as run
    return run(args)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except QwQError as e:
        print(f"qwq: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
