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

--int4 (issue 15's check) runs instead: 4-bit checkpoints as int4 on torch's tinygemm kernel.
- kernel: Int4Linear.from_codes on the device against dequantize-then-matmul, for AWQ codes
  (groups of 128) and GGUF Q4_0 / Q4_1 / Q4_K blocks (groups of 32, their codes taken on the
  device), batches 1, 8 and 64; on CUDA also against the CPU kernel on the same codes.
- model: the QwQ-32B shape built as load_int4 builds a 4-bit checkpoint, from random codes
  (no file: the device has no 20 GB to write), once as AWQ (groups of 128, 16-bit token
  table) and once as a Q4_K_M GGUF (groups of 32, the table in Q4_K blocks); the head int8.
  Its weight bytes against `qwq plan`'s, a KV cache sized as on a --gpu-memory card (85% of
  what is left after the weights and 0.75 GiB), KV tokens against the plan's, a 2048-token
  prefill and batch-1 decode (eager and CUDA graphs), and the peak memory against the card.
    PYTHONPATH=. python3 bench/gpu.py --int4 --tokenizer .gpu/tokenizer --out $OUT/int4.json
On CPU (tests/test_bench.py): python bench/gpu.py --int4 --device cpu --config tiny
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
    from qwq.benchmark import qwq_decode, transformers_decode
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
        tokens[mode] = run_to_completion(engine, [ids], [top_two(args.new)])[0].outputs[0]
        res[f"qwq_{mode}_tok_s"] = round(qwq_decode(engine, ids, args.new, runs=2), 1)
        busy = gpu_busy_fraction(engine, ids, 32)
        res[f"qwq_{mode}_gpu_busy_fraction"] = None if busy is None else round(busy, 3)
        del engine
        if device.type == "cuda":
            torch.cuda.empty_cache()
    res.update(graphs_against_eager(tokens["graphs"], tokens["eager"]))
    ours = tokens["graphs"].token_ids
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


def int4_kernel_check(device: torch.device, n: int, k: int) -> dict:
    """Largest relative error of Int4Linear.from_codes against x @ dequantized codes, per
    source; on CUDA also the largest relative difference from the CPU kernel."""
    from qwq.kernels import ggml
    from qwq.model.quant import Int4Linear
    from qwq.weights import awq
    gen = torch.Generator().manual_seed(0)
    sources = {}
    g = 128
    q, z = torch.randint(0, 16, (k, n), generator=gen), torch.randint(0, 16, (k // g, n),
                                                                     generator=gen)
    s = (torch.rand(k // g, n, generator=gen) * 0.01 + 1e-3).half()
    sources["awq"] = awq.group_codes(awq.pack(q), awq.pack(z), s, g)
    for t in ggml.INT4_EXACT:  # the codes taken on the device, as load_int4 does
        sources[t] = ggml.group_codes(ggml.random_blocks(t, n, k, gen).to(device), t)
    out: dict = {}
    for name, codes in sources.items():
        layer = Int4Linear.from_codes([codes], None, torch.bfloat16, device)
        w = codes.dequantize().to(device)
        cpu = Int4Linear.from_codes([codes], None, torch.bfloat16, "cpu") \
            if device.type == "cuda" else None
        err = vs_cpu = 0.0
        for m in (1, 8, 64):
            x = torch.randn(m, k, generator=gen).bfloat16()
            y = layer(x.to(device)).float()
            ref = x.to(device).float() @ w.t()
            err = max(err, ((y - ref).norm() / ref.norm()).item())
            if cpu is not None:
                yc = cpu(x).float().to(device)
                vs_cpu = max(vs_cpu, ((y - yc).norm() / yc.norm()).item())
        out[name] = {"rel_err": round(err, 5), "ok": err < 0.01}
        if cpu is not None:
            out[name]["vs_cpu_kernel"] = round(vs_cpu, 5)
    return out


def random_int4_model(config: ModelConfig, layout: str, device: torch.device, seed: int = 0):
    """The network load_int4 makes of a 4-bit checkpoint, from random codes made on the device
    one projection at a time: layout "awq" (groups of 128, a 16-bit token table) or "q4_k_m"
    (groups of 32, the table in random Q4_K blocks, Q4_0 where the width is no multiple of
    256); the head int8, norms 1, biases N(0, 0.02). Weights come out about N(0, 0.02)."""
    from qwq.kernels import ggml
    from qwq.model import Qwen2Model
    from qwq.model.ggml_linear import GGMLEmbedding
    from qwq.model.layout import layer_shapes
    from qwq.model.quant import Int4Linear, Int8Linear
    from qwq.stored import GroupCodes, StoredTensor
    group = 128 if layout == "awq" else 32
    dtype, h, vocab = torch.bfloat16, config.hidden_size, config.vocab_size
    gen = torch.Generator(device=device).manual_seed(seed)
    host_gen = torch.Generator().manual_seed(seed)  # the norms, biases and GGUF table: the
    shapes = layer_shapes(config)                   # same model every run, as on the card

    def codes(rows: int, cols: int) -> GroupCodes:
        q = torch.randint(0, 16, (rows, cols), dtype=torch.uint8, device=device, generator=gen)
        scale = torch.full((rows, cols // group), 0.02 / 4.6, device=device)  # std(q - 8) 4.6
        return GroupCodes(q, scale, torch.zeros_like(scale), group)

    def linear(names: list[str], bias):
        parts = [codes(*shapes[n.split(".", 3)[3]]) for n in names]
        return Int4Linear.from_codes(parts, bias, dtype, device)

    def load(name: str) -> torch.Tensor:
        shape = shapes[name.split(".", 3)[3]] if name.startswith("model.layers.") else (h,)
        if name.endswith("norm.weight"):
            return torch.ones(shape)
        return torch.randn(shape, generator=host_gen) * 0.02

    with torch.device("meta"):
        net = Qwen2Model(config)
    net.load_linears(linear, load, dtype, device)
    if layout == "awq":
        table = torch.randn(vocab, h, device=device, generator=gen, dtype=dtype) * 0.02
        net.embed_tokens = torch.nn.Embedding.from_pretrained(table, freeze=True)
    else:
        t = "Q4_K" if h % 256 == 0 else "Q4_0"
        raw = ggml.random_blocks(t, vocab, h, host_gen, scale=2 ** -7).to(device)
        net.embed_tokens = GGMLEmbedding(StoredTensor(raw, t, (vocab, h)), dtype)
    head = torch.nn.Linear(h, vocab, bias=False, device="meta")
    weight = torch.empty(vocab, h, dtype=dtype, device=device)
    for r in range(0, vocab, 16384):  # N(0, 0.02) a slab at a time: no float32 copy
        weight[r:r + 16384].normal_(0, 0.02, generator=gen)
    head.weight = torch.nn.Parameter(weight, requires_grad=False)
    net.lm_head = Int8Linear(head.weight.data, None, dtype)
    del head, weight
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return net.eval()


def top_two(new: int):
    """Greedy decoding that also reports each step's top two logprobs."""
    from qwq.benchmark import greedy
    return dataclasses.replace(greedy(new), logprobs=2)


def graphs_against_eager(graphs, eager) -> dict:
    """How many greedy tokens the padded (graph) step and the eager step share, and, where they
    part, the logprob gap between the two picks in each run (the larger of the two): padding
    changes matmul and softmax shapes, so a tie in the last bits of bf16 logits may break the
    other way; a gap wider than that is a bug in the padding, the scratch block or the mask."""
    n = next((i for i, (a, b) in enumerate(zip(graphs.token_ids, eager.token_ids)) if a != b),
             len(eager.token_ids))
    gap = None
    if n < len(eager.token_ids):
        g, e = graphs.token_ids[n], eager.token_ids[n]
        gl, el = graphs.logprobs[n], eager.logprobs[n]
        if e in gl and g in el:  # each run's pick among the other's top two
            gap = round(max(gl[g] - gl[e], el[e] - el[g]), 6)
    return {"graphs_eager_tokens_agree": n, "graphs_eager_parting_gap": gap}


def module_bytes(net) -> int:
    return sum(t.numel() * t.element_size() for t in (*net.parameters(), *net.buffers()))


def run_int4(args: argparse.Namespace) -> dict:
    """--int4: see the module docstring."""
    from qwq.benchmark import qwq_decode
    from qwq.llm import run_to_completion
    from qwq.models import engine_for, load_tokenizer, pick_device
    from qwq.plan import CUDA_RESERVE, KV_SHARE, parse_size, plan
    from qwq.tokenizer import Tokenizer

    device = pick_device(args.device)
    cuda = device.type == "cuda"
    config = TINY if args.config == "tiny" else PRESETS[args.config]
    tok = Tokenizer.from_dir(args.tokenizer) if args.tokenizer else load_tokenizer(None)[0]
    card = parse_size(args.gpu_memory)
    res: dict = {"device": torch.cuda.get_device_name(device) if cuda else "cpu",
                 "torch": torch.__version__, "config": args.config, "check": "int4",
                 "card_bytes": card}
    small = args.config == "tiny"
    res["kernel"] = int4_kernel_check(device, 256 if small else 1024, 512 if small else 5120)
    prefill = 64 if small else 2048
    for layout in ("awq", "q4_k_m"):
        r: dict = res.setdefault(layout, {})
        try:
            if cuda:
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats(device)
            t = time.perf_counter()
            net = random_int4_model(config, layout, device)
            sync(device)
            r["build_seconds"] = round(time.perf_counter() - t, 1)
            p = plan(config, 1, card, quantize=layout)
            r["weights_gb"] = round(module_bytes(net) / 1e9, 3)
            r["plan_weights_gb"] = round(p.weights_per_rank / 1e9, 3)
            held = torch.cuda.memory_allocated(device) if cuda else module_bytes(net)
            # as on the card: the cache takes 85% of what the weights and torch's reserve leave
            kv = int(KV_SHARE * (card - CUDA_RESERVE - held)) if cuda else 16 << 20
            if kv <= 0:
                r["error"] = f"the weights ({held / 1e9:.2f} GB) leave no room on the card"
                continue
            tokens = {}
            for mode in ("eager", "graphs"):
                engine = engine_for(net, tok, EngineConfig(
                    quantize="int4", kv_cache_memory=kv, max_num_seqs=1,
                    enable_prefix_caching=False, cuda_graphs=mode == "graphs"),
                    decode_graphs=None if cuda else mode == "graphs")
                r["kv_tokens"] = engine.blocks.num_blocks * engine.runner.block_size
                ids = [(i * 7919) % 150000 + 100 for i in range(prefill)]
                t = time.perf_counter()
                out = run_to_completion(engine, [ids], [top_two(args.new)])[0].outputs[0]
                sync(device)
                r[f"{mode}_prefill_and_decode_seconds"] = round(time.perf_counter() - t, 2)
                tokens[mode] = out
                r[f"{mode}_tok_s"] = round(qwq_decode(engine, ids[:args.prompt], args.new,
                                                      runs=1), 1)
                del engine
                if cuda:
                    torch.cuda.empty_cache()
            r["plan_kv_tokens"] = plan(config, 1, card, quantize=layout).kv_tokens
            r.update(graphs_against_eager(tokens["graphs"], tokens["eager"]))
            if cuda:
                peak = torch.cuda.max_memory_reserved(device)
                r["peak_reserved_gb"] = round(peak / 1e9, 2)
                r["fits_card"] = peak + CUDA_RESERVE <= card
        except Exception as e:  # noqa: BLE001 - report and go on to the other layout
            r["error"] = f"{type(e).__name__}: {e}"[:500]
        finally:
            net = None
            if cuda:
                torch.cuda.empty_cache()
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
    p.add_argument("--int4", action="store_true",
                   help="issue 15's check instead: 4-bit checkpoints as int4 (see above)")
    p.add_argument("--gpu-memory", default="24GiB",
                   help="--int4: the card whose memory the KV cache is sized for")
    args = p.parse_args(argv)
    if args.export_tokenizer:
        export_tokenizer(Path(args.export_tokenizer))
        return 0
    res = run_int4(args) if args.int4 else run(args)
    text = json.dumps(res, indent=1)
    print(text)
    if args.out:
        Path(args.out).write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
