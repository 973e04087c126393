"""APE prefill: parallel-encoded, cached contexts vs sequential encoding of the whole prompt.

    python3 benchmarks/bench_ape.py                      # H200, bf16, Qwen2.5-0.5B-shaped model (random weights)
    python3 benchmarks/bench_ape.py --device cpu --tiny  # CPU smoke run

For m contexts of L_c tokens after a shared prefix and before a query: ``sequential`` is one causal forward over
``[P ; C_1..C_m ; Q]`` (SDPA flash) up to the query logits; ``ape_encode`` is the one-off parallel encoding of the m
contexts after the cached prefix (cacheable); ``ape_query`` is the query-time cost when the context KV is cached
(load only, the paper's 28x prefill claim), once per ``--backends`` entry side by side: ``eager`` (materialised scores
per segment, LSE merge), ``flex`` (one compiled FlexAttention call per segment returning its LSE, then the merge) and
``graph`` (``APE(cuda_graphs=True)``: fixed shapes, own K/V in a fixed buffer, the whole query forward captured once
as a CUDA graph and replayed; on the CPU the same static code runs eagerly). With ``--decode-tokens N`` each backend
also answers greedily with N tokens (``ape_generate*_s``, ``decode_ms_per_token*`` = (generate - query) / (N - 1):
the graph backend replays one captured decode step per token) and ``decode_tokens_match*`` says whether its tokens
are the first backend's (eager by default).
``speedup_analytic`` is the forward-FLOP ratio sequential / cached query (token-wise FLOPs + attention pairs + LM head
on the query tokens). One JSON line per point to benchmarks/results/ape.jsonl.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
for p in (str(ROOT), str(ROOT / "benchmarks")):
    if p not in sys.path:
        sys.path.insert(0, p)

import torch  # noqa: E402
from bench_prefix_grouper import QWEN_05B, TINY, environment, is_oom  # noqa: E402


def analytic_speedup(cfg, lp: int, m: int, lc: int, lq: int) -> float:
    """Forward FLOPs of the sequential prompt over those of the cached-context query (same model, same head)."""
    d, h, hd = cfg.hidden_size, cfg.num_attention_heads, cfg.hidden_size // cfg.num_attention_heads
    kv = cfg.num_key_value_heads * hd
    tok = 2 * (d * (d + 2 * kv) + d * d + 3 * d * cfg.intermediate_size) * cfg.num_hidden_layers
    att = 4 * h * hd * cfg.num_hidden_layers
    head = 2 * d * cfg.vocab_size * lq
    n = lp + m * lc + lq
    seq = tok * n + att * n * (n + 1) / 2 + head
    query = tok * lq + att * (lq * (lp + m * lc) + lq * (lq + 1) / 2) + head
    return seq / query


def timed(fn, device, iters):
    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    fn()
    sync()
    ts = []
    for _ in range(iters):
        t0 = time.perf_counter()
        out = fn()
        sync()
        ts.append(time.perf_counter() - t0)
    return sorted(ts)[len(ts) // 2], out


def main(argv=None) -> int:
    from tasks.llm.methods.ape import APE
    from zoo.llm.prefix import decoder_and_head, enable_prefix_attention, lm_logits
    from zoo.llm import build_causal_lm

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--tiny", action="store_true")
    ap.add_argument("--m", default=None, help="numbers of contexts (default 8,32,64)")
    ap.add_argument("--Lc", default=None, help="context lengths (default 512,2048)")
    ap.add_argument("--prefix", type=int, default=None)
    ap.add_argument("--query", type=int, default=None)
    ap.add_argument("--iters", type=int, default=3)
    ap.add_argument("--backends", default="eager,flex", help="query-time paths (eager, flex, graph)")
    ap.add_argument("--decode-tokens", type=int, default=0, help="greedy tokens per point (0: no decode rows)")
    ap.add_argument("--flex-dynamic", default="true", choices=["true", "false", "auto"],
                    help="torch.compile dynamic of the FlexAttention kernel (true: one compile for the whole sweep)")
    ap.add_argument("--time-budget", type=float, default=90.0)
    ap.add_argument("--out", default=None)
    a = ap.parse_args(argv)
    device = torch.device(a.device)
    tiny = a.tiny
    from zoo.llm.prefix.flex import configure_flex

    configure_flex({"true": True, "false": False, "auto": None}[a.flex_dynamic])
    dtype = torch.float32 if device.type == "cpu" else torch.bfloat16
    ints = lambda x, d: [int(v) for v in (x or d).split(",")]  # noqa: E731
    ms, lcs = ints(a.m, "2,4" if tiny else "8,32,64"), ints(a.Lc, "16,32" if tiny else "512,2048")
    lp, lq = a.prefix or (8 if tiny else 64), a.query or (4 if tiny else 64)
    out = Path(a.out or ("/tmp/ape_tiny.jsonl" if tiny else ROOT / "benchmarks/results/ape.jsonl"))
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    shape = TINY if tiny else QWEN_05B
    model = build_causal_lm("qwen2", **shape).to(device=device, dtype=dtype).eval()
    enable_prefix_attention(model)
    common = {"bench": "ape", **environment(device), "flex_dynamic": a.flex_dynamic, "dtype": str(dtype).replace("torch.", ""), "shape": shape,
              "prefix_len": lp, "query_len": lq}
    t0 = time.perf_counter()

    def emit(rec):
        with out.open("a") as f:
            f.write(json.dumps({**common, **rec}) + "\n")
        print(json.dumps(rec), flush=True)

    base, _ = decoder_and_head(model)
    vocab = model.config.vocab_size
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        # parity on this device/dtype: one context, T = S = 1 vs sequential
        prefix = torch.randint(0, vocab, (lp,), generator=g).to(device)
        query = torch.randint(0, vocab, (lq,), generator=g).to(device)
        ctx = torch.randint(0, vocab, (lcs[0],), generator=g).to(device)
        exact = APE(model, 1.0, 1.0)
        pre = exact.encode_prefix(prefix)
        got = exact.query_logits(query, pre, exact.encode_contexts([ctx], pre)).float()
        h = base(input_ids=torch.cat([prefix, ctx, query])[None], use_cache=False).last_hidden_state[:, -lq:]
        ref = lm_logits(model, h)[0].float()
        emit({"kind": "parity", "max_abs_logit_diff": float((got - ref).abs().max()),
              "argmax_agreement": float((got.argmax(-1) == ref.argmax(-1)).float().mean())})
        ape = APE(model, 0.9, 0.9)
        pre = ape.encode_prefix(prefix)
        backends = [b for b in a.backends.split(",") if b]
        apes = {b: APE(model, 0.9, 0.9, backend=b) if b != "graph" else APE(model, 0.9, 0.9, cuda_graphs=True)
                for b in backends}
        if "flex" in apes:  # parity of the fused kernel against the eager LSE merge on this device/dtype
            c2 = apes["flex"].encode_contexts([ctx, ctx[: max(1, lcs[0] // 2)]], pre)
            lf = apes["flex"].query_logits(query, pre, c2).float()
            le = APE(model, 0.9, 0.9, backend="eager").query_logits(query, pre, c2).float()
            emit({"kind": "parity_flex", "max_abs_logit_diff": float((lf - le).abs().max()),
                  "argmax_agreement": float((lf.argmax(-1) == le.argmax(-1)).float().mean())})
        if "graph" in apes:  # the captured fixed-shape path against the eager LSE merge
            c2 = apes["graph"].encode_contexts([ctx, ctx[: max(1, lcs[0] // 2)]], pre)
            lg = apes["graph"].query_logits(query, pre, c2).float()
            le = APE(model, 0.9, 0.9, backend="eager").query_logits(query, pre, c2).float()
            emit({"kind": "parity_graph", "max_abs_logit_diff": float((lg - le).abs().max()),
                  "argmax_agreement": float((lg.argmax(-1) == le.argmax(-1)).float().mean())})
            apes["graph"]._static.clear()
        for m in ms:
            for lc in lcs:
                rec = {"kind": "point", "m": m, "Lc": lc, "total_tokens": lp + m * lc + lq,
                       "speedup_analytic": analytic_speedup(model.config, lp, m, lc, lq)}
                if time.perf_counter() - t0 > a.time_budget:
                    emit({**rec, "status": "skipped_time_budget"})
                    continue
                ctxs = [torch.randint(0, vocab, (lc,), generator=g).to(device) for _ in range(m)]
                try:
                    seq_ids = torch.cat([prefix, *ctxs, query])[None]

                    def sequential():
                        hid = base(input_ids=seq_ids, use_cache=False).last_hidden_state[:, -lq:]
                        return lm_logits(model, hid)

                    t_seq, _ = timed(sequential, device, a.iters)
                    t_enc, cached = timed(lambda: ape.encode_contexts(ctxs, pre), device, a.iters)
                    rec.update(status="ok", sequential_s=t_seq, ape_encode_s=t_enc)
                    if device.type == "cuda":
                        rec["peak_mem_gb"] = torch.cuda.max_memory_allocated(device) / 2**30
                    for b, runner in apes.items():
                        if device.type == "cuda":
                            torch.cuda.reset_peak_memory_stats(device)
                        t_q, _ = timed(lambda: runner.query_logits(query, pre, cached), device, a.iters)
                        tag = "" if b == "eager" else f"_{b}"
                        rec.update({f"ape_query{tag}_s": t_q, f"speedup_cached{tag}": t_seq / t_q,
                                    f"speedup_uncached{tag}": t_seq / (t_enc + t_q),
                                    f"fraction_of_analytic{tag}": t_seq / t_q / rec["speedup_analytic"]})
                        if device.type == "cuda":
                            rec[f"peak_mem_query{tag}_gb"] = torch.cuda.max_memory_allocated(device) / 2**30
                        n = a.decode_tokens
                        if n > 1:
                            t_g, toks = timed(lambda: runner.generate(query, pre, cached, n), device, a.iters)
                            rec.update({f"ape_generate{tag}_s": t_g, f"decode_ms_per_token{tag}": (t_g - t_q) / (n - 1)
                                        * 1e3})
                            if b == backends[0]:
                                first_tokens = toks.tolist()
                            else:
                                rec[f"decode_tokens_match{tag}"] = toks.tolist() == first_tokens
                        runner._static.clear()  # the fixed-shape decoders of this point (context K/V, graphs)
                except Exception as e:  # noqa: BLE001
                    if not is_oom(e):
                        raise
                    rec.update(status="oom", error=str(e).splitlines()[0][:200])
                finally:
                    if device.type == "cuda":
                        torch.cuda.empty_cache()
                emit(rec)
    emit({"kind": "done", "wall_s": time.perf_counter() - t0})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
