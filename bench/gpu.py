"""Issue 5's GPU check in one call: the QwQ-32B-Preview architecture with random bf16 weights,
decoding at batch 1 on CUDA, against the HBM-bandwidth limit and against transformers'
`generate` on the very same weight tensors.

- Bandwidth: a device-to-device copy, counted as bytes read + bytes written.
- Limit: the bytes a decode step must read (every weight but the embedding table, of which it
  reads one row per token) over that bandwidth; the same over all weight bytes is printed too.
- qwq: the one engine (qwq.engine), quantize none, greedy, 128 new tokens after 128 prompt
  tokens, the first token not counted; eager and with CUDA graphs (the default on CUDA); a
  profiler pass says how much of a step the GPU is busy.
- transformers: Qwen2ForCausalLM whose parameters are views of qwq's (fused q|k|v and gate|up
  split by rows), so both read the same memory; `generate`, greedy, same prompt and count.

A device machine has torch, tokenizers, jinja2 and transformers but not the demo model, so the
tokenizer travels as files. Here, once:
    python bench/gpu.py --export-tokenizer .gpu/tokenizer      (.gpu/ is git-ignored)
There (device tool: carry [".gpu"]):
    PYTHONPATH=. python3 bench/gpu.py --tokenizer .gpu/tokenizer --out $OUT/gpu.json
On CPU a small config runs every step, in float32 so the greedy tokens of both must agree
(tests/test_bench.py does this):
    python bench/gpu.py --device cpu --config tiny --dtype float32
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from qwq.benchmark import sync
from qwq.config import PRESETS, EngineConfig, ModelConfig

TINY = dataclasses.replace(PRESETS["qwq-demo"], hidden_size=128, intermediate_size=256,
                           num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2)


def copy_bandwidth(device: torch.device, nbytes: int, iters: int = 10) -> float:
    """Bytes read + written per second by a device-to-device copy (best of 3 batches)."""
    src = torch.empty(nbytes, dtype=torch.uint8, device=device).fill_(1)
    dst = torch.empty_like(src)
    dst.copy_(src)
    best = float("inf")
    for _ in range(3):
        sync(device)
        t = time.perf_counter()
        for _ in range(iters):
            dst.copy_(src)
        sync(device)
        best = min(best, time.perf_counter() - t)
    del src, dst
    return 2 * nbytes * iters / best


def random_model(config: ModelConfig, dtype: torch.dtype, device: torch.device, seed: int = 0):
    """qwq's Qwen2Model with N(0, 0.02) weights and biases, unit norms, built on the device."""
    from qwq.model import Qwen2Model
    with torch.device("meta"):
        net = Qwen2Model(config)
    net = net.to(dtype).to_empty(device=device)
    gen = torch.Generator(device=device).manual_seed(seed)
    with torch.no_grad():
        for name, p in net.named_parameters():
            if name.endswith("norm.weight"):
                p.fill_(1)
            else:
                p.normal_(0, 0.02, generator=gen)
    return net.eval()


def transformers_on(net):
    """transformers' Qwen2ForCausalLM whose parameters are views of `net`'s tensors."""
    import transformers
    cfg = net.config
    hf_cfg = transformers.Qwen2Config(**{k: v for k, v in cfg.to_hf_dict().items()
                                         if k not in ("architectures", "model_type")})
    with torch.device("meta"):
        hf = transformers.Qwen2ForCausalLM(hf_cfg)
    q, kv, inter = cfg.num_attention_heads * cfg.head_dim, cfg.num_key_value_heads * cfg.head_dim, \
        cfg.intermediate_size
    state = {"model.embed_tokens.weight": net.embed_tokens.weight,
             "model.norm.weight": net.norm.weight, "lm_head.weight": net.lm_head.weight}
    for i, layer in enumerate(net.layers):
        pre = f"model.layers.{i}."
        qkv_w, qkv_b = layer.self_attn.qkv_proj.weight, layer.self_attn.qkv_proj.bias
        for j, (part, lo, hi) in enumerate((("q", 0, q), ("k", q, q + kv), ("v", q + kv, q + 2 * kv))):
            state[pre + f"self_attn.{part}_proj.weight"] = qkv_w[lo:hi]
            state[pre + f"self_attn.{part}_proj.bias"] = qkv_b[lo:hi]
        gate_up = layer.mlp.gate_up_proj.weight
        state.update({pre + "self_attn.o_proj.weight": layer.self_attn.o_proj.weight,
                      pre + "mlp.gate_proj.weight": gate_up[:inter],
                      pre + "mlp.up_proj.weight": gate_up[inter:],
                      pre + "mlp.down_proj.weight": layer.mlp.down_proj.weight,
                      pre + "input_layernorm.weight": layer.input_layernorm.weight,
                      pre + "post_attention_layernorm.weight":
                          layer.post_attention_layernorm.weight})
    hf.load_state_dict(state, assign=True, strict=True)
    device = net.embed_tokens.weight.device
    hf.model.rotary_emb = type(hf.model.rotary_emb)(hf.config).to(device)
    return hf.eval()


def gpu_busy_fraction(engine, ids: list[int], steps: int) -> float | None:
    """Share of decode wall time the GPU spends in kernels (profiler), None off CUDA."""
    if engine.runner.device.type != "cuda":
        return None
    from torch.profiler import ProfilerActivity, profile

    from qwq.benchmark import greedy
    rid = engine.add_request(ids, greedy(steps + 1))
    engine.step()  # the prefill, outside the window
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        t = time.perf_counter()
        while engine.is_active(rid):
            engine.step()
        sync(engine.runner.device)
        wall = time.perf_counter() - t
    busy_us = sum(getattr(e, "self_device_time_total", 0) or getattr(e, "self_cuda_time_total", 0)
                  for e in prof.key_averages())
    return busy_us / 1e6 / wall


def export_tokenizer(dest: Path) -> None:
    from qwq.models import load_tokenizer
    print(f"wrote {load_tokenizer(None)[0].save(dest)}")


def run(args: argparse.Namespace) -> dict:
    from qwq.benchmark import greedy, qwq_decode, transformers_decode
    from qwq.llm import run_to_completion
    from qwq.models import engine_for, load_tokenizer, pick_device
    from qwq.tokenizer import Tokenizer

    device = pick_device(args.device)
    dtype = {"bfloat16": torch.bfloat16, "float32": torch.float32}[args.dtype]
    config = TINY if args.config == "tiny" else PRESETS[args.config]
    tok = Tokenizer.from_dir(args.tokenizer) if args.tokenizer else load_tokenizer(None)[0]
    res: dict = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
                 "torch": torch.__version__, "config": args.config, "dtype": args.dtype,
                 "prompt_tokens": args.prompt, "new_tokens": args.new}
    bw = copy_bandwidth(device, args.copy_mib << 20)
    res["copy_bandwidth_gb_s"] = round(bw / 1e9, 1)

    t = time.perf_counter()
    net = random_model(config, dtype, device)
    sync(device)
    res["build_seconds"] = round(time.perf_counter() - t, 1)
    every = sum(p.numel() * p.element_size() for p in net.parameters())
    table = net.embed_tokens.weight
    read = every - table.numel() * table.element_size()  # one embedding row per token
    res.update(weights_gb=round(every / 1e9, 2), read_per_token_gb=round(read / 1e9, 2),
               limit_tok_s=round(bw / read, 1), limit_all_weights_tok_s=round(bw / every, 1))

    blocks = -(-(args.prompt + args.new + 16) // 16)
    ids = [(i * 7919) % 150000 + 100 for i in range(args.prompt)]
    tokens = {}
    for mode in ("eager", "graphs"):  # CUDA graphs are the default on CUDA; no-op elsewhere
        # off CUDA, "graphs" runs their padded buffers eagerly (what the CPU test compares)
        engine = engine_for(net, tok, EngineConfig(
            quantize="none", num_kv_blocks=2 * blocks, max_num_seqs=1,
            enable_prefix_caching=False, cuda_graphs=mode == "graphs"),
            decode_graphs=None if device.type == "cuda" else mode == "graphs")
        # the first run warms up (and captures the graphs)
        tokens[mode] = run_to_completion(engine, [ids], [greedy(args.new)])[0].outputs[0].token_ids
        res[f"qwq_{mode}_tok_s"] = round(qwq_decode(engine, ids, args.new, runs=2), 1)
        busy = gpu_busy_fraction(engine, ids, 32)
        res[f"qwq_{mode}_gpu_busy_fraction"] = None if busy is None else round(busy, 3)
        del engine
        if device.type == "cuda":
            torch.cuda.empty_cache()
    ours = tokens["graphs"]
    res["graphs_eager_tokens_agree"] = next(
        (i for i, (a, b) in enumerate(zip(ours, tokens["eager"])) if a != b), len(ours))
    res["qwq_tok_s"] = res["qwq_graphs_tok_s"]  # the default on CUDA
    res["qwq_fraction_of_limit"] = round(res["qwq_tok_s"] / res["limit_tok_s"], 3)

    if not args.no_transformers:
        hf = transformers_on(net)
        with torch.no_grad():
            x = torch.tensor([ids], device=device)
            theirs = hf.generate(x, max_new_tokens=args.new, min_new_tokens=args.new,
                                 do_sample=False)[0, len(ids):].tolist()
        res["transformers_tok_s"] = round(transformers_decode(hf, [ids], args.new, runs=1), 1)
        res["qwq_over_transformers"] = round(res["qwq_tok_s"] / res["transformers_tok_s"], 2)
        same = next((i for i, (a, b) in enumerate(zip(ours, theirs)) if a != b), len(ours))
        res["greedy_tokens_agree"] = same  # leading tokens equal (bf16 may part on near-ties)
    res["meets_70pct_of_limit"] = res["qwq_fraction_of_limit"] >= 0.70
    if device.type == "cuda":
        res["peak_gpu_memory_gb"] = round(torch.cuda.max_memory_allocated(device) / 1e9, 1)
    return res


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="auto")
    p.add_argument("--config", default="qwq-32b-preview", choices=[*PRESETS, "tiny"])
    p.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
    p.add_argument("--tokenizer", help="a directory with tokenizer.json (else the demo model's)")
    p.add_argument("--prompt", type=int, default=128)
    p.add_argument("--new", type=int, default=128)
    p.add_argument("--copy-mib", type=int, default=4096, help="size of the copy-bandwidth buffer")
    p.add_argument("--no-transformers", action="store_true")
    p.add_argument("--out", help="also write the result here as JSON")
    p.add_argument("--export-tokenizer", metavar="DIR", help="write the demo tokenizer and stop")
    args = p.parse_args(argv)
    if args.export_tokenizer:
        export_tokenizer(Path(args.export_tokenizer))
        return 0
    res = run(args)
    text = json.dumps(res, indent=1)
    print(text)
    if args.out:
        Path(args.out).write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
