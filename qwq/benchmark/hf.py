"""transformers' side of a benchmark: its Qwen2ForCausalLM holding the same weights."""

from __future__ import annotations

import time

import torch

from qwq.benchmark.machine import peak_rss_mib
from qwq.benchmark.workloads import best_of, nll_to_ppl, ppl_windows, prompt_ids, scored
from qwq.models import load_tokenizer, resolve
from qwq.weights import open_checkpoint


def sync(device) -> None:
    """Wait for a CUDA device's queued work (timing); nothing elsewhere."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def transformers_model(model=None, dtype=None):
    """transformers' Qwen2ForCausalLM (bf16 unless told) holding the same weights, dequantized
    by qwq (bit-identical to transformers' own GGUF loader, which is much slower)."""
    import transformers  # heavy, and only for this peer
    dtype = dtype or torch.bfloat16

    ckpt = open_checkpoint(resolve(model).path)
    hf = {k: v for k, v in ckpt.config.to_hf_dict().items()
          if k not in ("architectures", "model_type")}
    with torch.device("meta"):
        net = transformers.Qwen2ForCausalLM(transformers.Qwen2Config(**hf))
    net.load_state_dict(dict(ckpt.iter_tensors(dtype=dtype)), assign=True)
    net.model.rotary_emb = type(net.model.rotary_emb)(net.config)
    return net.to(dtype).eval()


def transformers_decode(net, prompts: list[list[int]], new: int, runs: int = 1) -> float:
    """Generated tok/s for a batch of equal-length prompts, the first token's cost removed."""
    x = torch.tensor(prompts, device=net.device)

    def once() -> float:
        with torch.no_grad():
            t = time.perf_counter()
            net.generate(x, max_new_tokens=new, min_new_tokens=new, do_sample=False)
            sync(x.device)
            total = time.perf_counter() - t
            t = time.perf_counter()
            net.generate(x, max_new_tokens=1, do_sample=False)
            sync(x.device)
            first = time.perf_counter() - t
        return (total - first) / (new - 1)

    return len(prompts) / best_of(runs, once)


def transformers_prefill(net, ids: list[int], runs: int = 2) -> float:

    def once() -> float:
        with torch.no_grad():
            t = time.perf_counter()
            net(torch.tensor([ids]), logits_to_keep=1)
            return time.perf_counter() - t

    return len(ids) / best_of(runs, once)


def transformers_ppl(net, chunks: list[list[int]]) -> float:
    nll, count = 0.0, 0
    with torch.no_grad():
        for chunk in chunks:
            logp = net(torch.tensor([chunk])).logits[0].float().log_softmax(-1)
            at = torch.tensor(list(scored(len(chunk))))
            nll -= float(logp[at - 1].gather(1, torch.tensor(chunk)[at][:, None]).sum())
            count += len(at)
    return nll_to_ppl(nll, count)


def run_transformers(plan: dict) -> dict:
    tok, _ = load_tokenizer(plan["model"])
    net = transformers_model(plan["model"])
    res: dict = {"format": "bf16, dequantized"}
    tests = plan["tests"]
    if "pp" in tests:
        res["pp_tok_s"] = transformers_prefill(net, prompt_ids(tok, plan["pp"]), plan["runs"])
    if "tg" in tests:
        res["tg_tok_s"] = transformers_decode(net, [prompt_ids(tok, 42)], plan["tg"], 1)
    if "batch" in tests:
        res["batch_tok_s"] = {str(n): transformers_decode(
            net, [prompt_ids(tok, 42, salt=i + 1) for i in range(n)], plan["batch_tokens"], 1)
            for n in plan["batch"]}
    if "ppl" in tests:
        res["ppl"] = transformers_ppl(net, ppl_windows(tok, plan["ppl_window"],
                                                       plan["ppl_windows"]))
    res["peak_rss_mib"] = peak_rss_mib()
    return res

