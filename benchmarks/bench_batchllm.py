"""BatchLLM-style offline generation with global prefix sharing vs no sharing.

    python3 benchmarks/bench_batchllm.py                      # H200, bf16, Qwen2.5-0.5B-shaped model (random)
    python3 benchmarks/bench_batchllm.py --device cpu --tiny  # CPU smoke run

Synthetic batch: K documents of D tokens, Q questions each (q tokens), greedy outputs of N tokens. Methods:
``batchllm`` (prefix tree + one-level groups, prefix prefilled once, LSE-merged attention), ``hf_batched`` (all
prompts in one left-padded batch with the model's KV cache, no sharing) and ``alone`` (one prompt at a time, timed on
a few prompts and reported per prompt). Generated tokens/s and output agreement go to benchmarks/results/batchllm.jsonl.
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


def main(argv=None) -> int:
    from tasks.llm.engines.batchllm import BatchLLMEngine
    from tasks.llm.engines.generation import sample_completions
    from zoo.llm import build_causal_lm

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--tiny", action="store_true")
    ap.add_argument("--docs", type=int, default=None)
    ap.add_argument("--D", default=None, help="document lengths (default 1024,4096)")
    ap.add_argument("--Q", default=None, help="questions per document (default 8,32)")
    ap.add_argument("--q-len", type=int, default=None)
    ap.add_argument("--new", type=int, default=None, help="generated tokens per request")
    ap.add_argument("--alone", type=int, default=4, help="prompts timed one at a time")
    ap.add_argument("--lse-merge", type=int, default=1)
    ap.add_argument("--time-budget", type=float, default=90.0)
    ap.add_argument("--out", default=None)
    a = ap.parse_args(argv)
    device = torch.device(a.device)
    tiny = a.tiny
    dtype = torch.float32 if device.type == "cpu" else torch.bfloat16
    ints = lambda x, d: [int(v) for v in (x or d).split(",")]  # noqa: E731
    n_docs = a.docs or (2 if tiny else 4)
    ds, qs = ints(a.D, "32" if tiny else "1024,4096"), ints(a.Q, "3" if tiny else "8,32")
    q_len, n_new = a.q_len or (4 if tiny else 32), a.new or (4 if tiny else 32)
    out = Path(a.out or ("/tmp/batchllm_tiny.jsonl" if tiny else ROOT / "benchmarks/results/batchllm.jsonl"))
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    shape = TINY if tiny else QWEN_05B
    model = build_causal_lm("qwen2", **shape).to(device=device, dtype=dtype).eval()
    common = {"bench": "batchllm", **environment(device), "dtype": str(dtype).replace("torch.", ""), "shape": shape,
              "docs": n_docs, "question_len": q_len, "new_tokens": n_new}
    t0 = time.perf_counter()

    def emit(rec):
        with out.open("a") as f:
            f.write(json.dumps({**common, **rec}) + "\n")
        print(json.dumps(rec), flush=True)

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    vocab = model.config.vocab_size
    g = torch.Generator().manual_seed(0)
    engine = BatchLLMEngine(model, kv_budget_tokens=1 << 22, eos_id=None, lse_merge=bool(a.lse_merge))
    for d in ds:
        for q in qs:
            rec = {"kind": "point", "D": d, "Q": q, "requests": n_docs * q}
            if time.perf_counter() - t0 > a.time_budget:
                emit({**rec, "status": "skipped_time_budget"})
                continue
            docs = [torch.randint(0, vocab, (d,), generator=g) for _ in range(n_docs)]
            prompts = [torch.cat([doc, torch.randint(0, vocab, (q_len,), generator=g)]).to(device)
                       for doc in docs for _ in range(q)]
            n_gen = len(prompts) * n_new
            try:
                with torch.no_grad():
                    engine.generate(prompts[:2], 2)  # warm-up
                    sync()
                    t = time.perf_counter()
                    ours = engine.generate(prompts, n_new)
                    sync()
                    t_ours = time.perf_counter() - t
                    rec.update(batchllm_s=t_ours, batchllm_tok_s=n_gen / t_ours, **engine.stats)
                    try:
                        t = time.perf_counter()
                        hf = sample_completions(model, prompts, 1, n_new, greedy=True)
                        sync()
                        t_hf = time.perf_counter() - t
                        agree = sum(o.tolist() == h[0].tolist() for o, h in zip(ours, hf)) / len(prompts)
                        rec.update(hf_batched_s=t_hf, hf_batched_tok_s=n_gen / t_hf,
                                   speedup_vs_hf_batched=t_hf / t_ours, greedy_agreement_vs_hf=agree)
                    except Exception as e:  # noqa: BLE001
                        if not is_oom(e):
                            raise
                        rec["hf_batched"] = "oom"
                    k = min(a.alone, len(prompts))
                    t = time.perf_counter()
                    for p in prompts[:k]:
                        sample_completions(model, [p], 1, n_new, greedy=True)
                    sync()
                    per = (time.perf_counter() - t) / k
                    rec.update(alone_s_per_prompt=per, alone_tok_s=n_new / per,
                               speedup_vs_alone=per * len(prompts) / t_ours, status="ok")
                    if device.type == "cuda":
                        rec["peak_mem_gb"] = torch.cuda.max_memory_allocated(device) / 2**30
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
