"""`qwq bench`'s table: each system's figures and their ratios to llama.cpp's."""

from __future__ import annotations


def _fmt(value, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def table(result: dict) -> str:
    systems = result["systems"]
    base = systems.get("llama.cpp", {})
    qwq = systems.get("qwq", {})
    rows = [(f"qwq bench  {result['date']}  {result['machine']}  threads {result['threads']}  "
             f"load {result['load_before']} -> {result['load_after']}"),
            (f"{'system':13s} {'format':20s} {'pp tok/s':>9s} {'pp/llama':>9s} "
             f"{'tg tok/s':>9s} {'tg/llama':>9s} {'ppl':>8s} {'ppl/llama':>9s} "
             f"{'peak MiB':>9s}")]
    for name, r in systems.items():
        if "error" in r:
            rows.append(f"{name:13s} error: {r['error']}")
            continue
        tg, btg = r.get("tg_tok_s"), base.get("tg_tok_s")
        pp, bpp = r.get("pp_tok_s"), base.get("pp_tok_s")
        ppl, bppl = r.get("ppl"), base.get("ppl")
        rows.append(f"{name:13s} {str(r.get('format', ''))[:20]:20s} "
                    f"{_fmt(pp):>9s} {_fmt(pp / bpp if pp and bpp else None, 2):>9s} "
                    f"{_fmt(tg):>9s} "
                    f"{_fmt(tg / btg if tg and btg else None, 2):>9s} {_fmt(ppl, 3):>8s} "
                    f"{_fmt(ppl / bppl if ppl and bppl else None, 3):>9s} "
                    f"{_fmt(r.get('peak_rss_mib'), 0):>9s}")
    for name, r in systems.items():
        for n, rate in (r.get("batch_tok_s") or {}).items():
            one = r.get("tg_tok_s")
            whole = (r.get("batch_with_prefill_tok_s") or {}).get(n)
            rows.append(f"{name} batch {n:>3s}: {rate:.1f} tok/s aggregate decode"
                        + (f" = {rate / one:.2f}x its batch-1 decode" if one else "")
                        + (f"; {whole:.1f} tok/s counting the prefills" if whole else ""))
    if qwq.get("tg_tok_s") and systems.get("transformers", {}).get("tg_tok_s"):
        rows.append(f"qwq / transformers decode: "
                    f"{qwq['tg_tok_s'] / systems['transformers']['tg_tok_s']:.2f}x")
    mem = result.get("serving_memory")
    if mem and "error" not in mem:
        rows.append(f"qwq serving {mem['seqs']} x {mem['tokens_per_seq']} tokens: peak RSS "
                    f"{mem['peak_rss_mib']:.0f} MiB = {mem['rss_over_weights_kv']:.2f}x weights "
                    f"({mem['weights_mib']:.0f} MiB) + KV cache ({mem['kv_cache_mib']:.0f} MiB)"
                    + ("; loading peaked at " + f"{mem['load_peak_rss_mib']:.0f} MiB"
                       if mem.get("peak_excludes_loading") else " (loading included)"))
        if mem.get("runtime_rss_mib"):
            rows.append(f"  less the runtime before the model ({mem['runtime_rss_mib']:.0f} MiB: "
                        f"python, torch, tokenizer): {mem['model_rss_over_weights_kv']:.2f}x")
    elif mem:
        rows.append(f"qwq serving memory: error: {mem['error']}")
    return "\n".join(rows)

