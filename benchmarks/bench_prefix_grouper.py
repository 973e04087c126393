"""Prefix Grouper vs the repeated-prefix baseline: GRPO forward+backward step time, peak memory, tokens/s.

Methods (``--methods``, side by side in one run): ``baseline`` (every prompt repeated G times, the model's SDPA),
``prefix_grouper`` (the packed layout, ``split`` path: SDPA prefix call + suffix call with gathers) and
``prefix_grouper_flex`` (the packed layout, one compiled FlexAttention kernel per layer with the layout's block mask).

    python3 benchmarks/bench_prefix_grouper.py                      # H200 sweep (< 8 min), bf16, Qwen2.5-0.5B shape
    python3 benchmarks/bench_prefix_grouper.py --device cpu --tiny  # CPU smoke run (tiny model, seconds)

Same model (a Qwen2-shaped ~0.5B model built from config, random weights), same attention kernel (PyTorch SDPA: the
baseline's causal blocks and Prefix Grouper's prefix block use ``is_causal``, its suffix block the bottom-right causal
bias -- all flash-eligible), same GRPO loss on the completion tokens. Sweep P x S x G (issue 7); each point writes one
JSON line per method and a summary line with the measured speedup next to the analytic FLOP ratio, then a line with
the largest G that fits per (P, S, method). Points that run out of memory are recorded as ``oom`` and skipped; the
sweep stops adding points when ``--time-budget`` seconds have passed.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import platform
import shlex
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

QWEN_05B = dict(  # Qwen2.5-0.5B shape
    hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14, num_key_value_heads=2,
    vocab_size=151936, tie_word_embeddings=True, rope_theta=1000000.0, max_position_embeddings=65536,
)
TINY = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
            vocab_size=1000, tie_word_embeddings=True, max_position_embeddings=4096)


def environment(device: torch.device) -> dict:
    import transformers

    from tasks.bench import git_commit

    commit = git_commit()[0] or None
    return {
        "command": " ".join(shlex.quote(a) for a in [Path(sys.executable).name, *sys.argv]),
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "git_commit": commit,
        "host": platform.node(),
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "cpu": platform.processor() or platform.machine(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
    }


def build_model(family: str, shape: dict, dtype: torch.dtype, device: torch.device, grad_ckpt: bool):
    from zoo.llm.prefix import enable_prefix_attention
    from zoo.llm import build_causal_lm, enable_activation_checkpointing

    torch.manual_seed(0)
    model = build_causal_lm(family, **shape).to(device=device, dtype=dtype)
    enable_prefix_attention(model)  # plain forwards stay SDPA; packed forwards use the shared-prefix attention
    if grad_ckpt:
        enable_activation_checkpointing(model)
    model.train()
    return model


def analytic_flops(cfg, p: int, s: int, g: int) -> dict:
    """Forward FLOPs (x3 for fwd+bwd, identical factor for both methods) of the two layouts.

    Token-wise: 2 * (non-embedding params) per token; attention: 4 * H * d per (query, key) pair (QK^T and PV), causal
    pairs only; LM head: 2 * D * V on the G*S completion positions in both methods.
    """
    d, h, hd = cfg.hidden_size, cfg.num_attention_heads, cfg.hidden_size // cfg.num_attention_heads
    kv = cfg.num_key_value_heads * hd
    per_layer = d * (d + 2 * kv) + d * d + 3 * d * cfg.intermediate_size
    tok = 2 * per_layer * cfg.num_hidden_layers
    att = 4 * h * hd * cfg.num_hidden_layers
    head = 2 * d * cfg.vocab_size * g * s
    base_tokens, pg_tokens = g * (p + s), p + g * s
    base_pairs = g * (p + s) * (p + s + 1) / 2
    pg_pairs = p * (p + 1) / 2 + g * (s * p + s * (s + 1) / 2)
    base = tok * base_tokens + att * base_pairs + head
    pg = tok * pg_tokens + att * pg_pairs + head
    return {
        "flop_ratio_tokenwise": pg_tokens / base_tokens,
        "flop_ratio_analytic": pg / base,
        "speedup_bound_analytic": base / pg,
        "fwd_flops_baseline": base,
        "fwd_flops_prefix_grouper": pg,
    }


METHODS = ("baseline", "prefix_grouper", "prefix_grouper_flex")
MODE = {"baseline": None, "prefix_grouper": "split", "prefix_grouper_flex": "flex"}


def make_step(model, method: str, p: int, s: int, g: int, device: torch.device):
    """A GRPO fwd+bwd step on one prompt of length P with G completions of length S (on-policy surrogate)."""
    from tasks.llm.methods.grpo import completion_logps, grpo_loss

    vocab = model.config.vocab_size
    gen = torch.Generator(device="cpu").manual_seed(p * 31 + s * 7 + g)
    prompt = torch.randint(0, vocab, (p,), generator=gen).to(device)
    comps = [[torch.randint(0, vocab, (s,), generator=gen).to(device) for _ in range(g)]]
    adv = torch.randn(g, generator=gen).to(device)

    def step():
        logp, valid, _ = completion_logps(model, [prompt], comps, prefix_grouper=method != "baseline",
                                          mode=MODE[method] or "split")
        loss, _ = grpo_loss(logp, valid, adv)
        loss.backward()
        return loss.detach()

    return step


def measure(step, device: torch.device, warmup: int, iters: int) -> dict:
    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    for _ in range(warmup):
        step()
    sync()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times = []
    loss = None
    for _ in range(iters):
        t0 = time.perf_counter()
        loss = step()
        sync()
        times.append(time.perf_counter() - t0)
    times.sort()
    out = {"step_time_s": times[len(times) // 2], "step_times_s": times, "loss": float(loss)}
    if device.type == "cuda":
        out["peak_mem_gb"] = torch.cuda.max_memory_allocated(device) / 2**30
    return out


def is_oom(e: BaseException) -> bool:
    return isinstance(e, torch.OutOfMemoryError) or "out of memory" in str(e).lower()


def parity(model, device, p: int, s: int, g: int, methods=METHODS) -> dict:
    """Loss and gradient-norm agreement of the methods on the real-size model (bf16: ~1e-2 noise expected)."""
    res = {}
    for method in methods:
        model.zero_grad(set_to_none=True)
        loss = make_step(model, method, p, s, g, device)()
        sq = sum(float(x.grad.float().pow(2).sum()) for x in model.parameters() if x.grad is not None)
        res[method] = (float(loss), sq**0.5)
    model.zero_grad(set_to_none=True)
    lb, gb = res["baseline"]
    out = {"loss_baseline": lb, "grad_norm_baseline": gb}
    for method in methods:
        if method == "baseline":
            continue
        lp, gp = res[method]
        tag = "" if method == "prefix_grouper" else method[len("prefix_grouper"):]
        out.update({f"loss_{method}": lp, f"grad_norm_{method}": gp,
                    f"loss_rel_diff{tag}": abs(lp - lb) / max(abs(lb), 1e-12),
                    f"grad_norm_rel_diff{tag}": abs(gp - gb) / gb})
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--tiny", action="store_true", help="tiny model and lengths (CPU smoke run)")
    ap.add_argument("--family", default="qwen2", choices=["qwen2", "llama", "mistral"])
    ap.add_argument("--dtype", default=None, help="bf16 (GPU default) or fp32 (CPU default)")
    ap.add_argument("--P", default=None, help="prefix lengths, comma separated (default 1024,4096,16384)")
    ap.add_argument("--S", default=None, help="suffix lengths (default 256,1024)")
    ap.add_argument("--G", default=None, help="group sizes (default 4,8,16)")
    ap.add_argument("--probe-G", default=None, help="extra group sizes tried for the largest G that fits (32,64)")
    ap.add_argument("--no-grad-ckpt", action="store_true", help="disable gradient checkpointing (on by default)")
    ap.add_argument("--methods", default=",".join(METHODS), help=f"comma separated, from {','.join(METHODS)}")
    ap.add_argument("--flex-dynamic", default="true", choices=["true", "false", "auto"],
                    help="torch.compile dynamic of the FlexAttention kernel (true: one compile for the whole sweep)")
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--iters", type=int, default=2)
    ap.add_argument("--time-budget", type=float, default=330.0, help="seconds; later points are skipped")
    ap.add_argument("--out", default=None, help="JSON lines file (default benchmarks/results/prefix_grouper.jsonl; "
                    "--tiny: /tmp/prefix_grouper_tiny.jsonl)")
    a = ap.parse_args(argv)

    device = torch.device(a.device)
    tiny = a.tiny
    dtype = {"bf16": torch.bfloat16, "fp32": torch.float32, "fp16": torch.float16}[
        a.dtype or ("fp32" if device.type == "cpu" else "bf16")]
    ints = lambda x, d: [int(v) for v in (x or d).split(",") if v]  # noqa: E731
    ps = ints(a.P, "32,64" if tiny else "1024,4096,16384")
    ss = ints(a.S, "8,16" if tiny else "256,1024")
    gs = ints(a.G, "2,4" if tiny else "4,8,16")
    probe = ints(a.probe_G, "8" if tiny else "32,64")
    default_out = "/tmp/prefix_grouper_tiny.jsonl" if tiny else ROOT / "benchmarks/results/prefix_grouper.jsonl"
    out = Path(a.out or default_out)
    out.parent.mkdir(parents=True, exist_ok=True)
    grad_ckpt = not a.no_grad_ckpt
    from zoo.llm.prefix.flex import configure_flex

    configure_flex({"true": True, "false": False, "auto": None}[a.flex_dynamic])
    methods = [m for m in a.methods.split(",") if m]
    if "baseline" not in methods or any(m not in METHODS for m in methods):
        ap.error(f"--methods: 'baseline' and any of {METHODS}")
    env = environment(device)
    t_start = time.perf_counter()
    model = build_model(a.family, TINY if tiny else QWEN_05B, dtype, device, grad_ckpt)
    cfg = model.config
    n_params = sum(x.numel() for x in model.parameters())
    common = {"bench": "prefix_grouper", **env, "flex_dynamic": a.flex_dynamic, "family": a.family, "dtype": str(dtype).replace("torch.", ""),
              "grad_ckpt": grad_ckpt, "params_m": round(n_params / 1e6, 1), "shape": TINY if tiny else QWEN_05B,
              "attention": "baseline/prefix_grouper: sdpa (flash-eligible causal / bottom-right causal blocks); "
                           "prefix_grouper_flex: compiled FlexAttention with the packed block mask"}

    def emit(rec: dict) -> None:
        line = json.dumps({**common, **rec})
        with out.open("a") as f:
            f.write(line + "\n")
        short = {k: v for k, v in rec.items() if k not in ("step_times_s",)}
        print(json.dumps(short), flush=True)

    try:
        emit({"kind": "parity", "P": ps[0], "S": ss[0], "G": gs[0],
              **parity(model, device, ps[0], ss[0], gs[0], methods)})
    except Exception as e:  # noqa: BLE001
        if not is_oom(e):
            raise
        emit({"kind": "parity", "status": "oom"})

    fits: dict[tuple[int, int, str], int] = {}
    oom_at: dict[tuple[int, int, str], int] = {}
    # the main sweep first, then the larger-G probes (so a time-budget cut never drops a main point for a probe)
    plan = [(p, s, g, False) for p in ps for s in ss for g in gs]
    plan += [(p, s, g, True) for p in ps for s in ss for g in probe if g not in gs]
    for p, s, g, is_probe in plan:
        rec_pair = {"P": p, "S": s, "G": g, **analytic_flops(cfg, p, s, g)}
        results = {}
        for method in methods:
            key = (p, s, method)
            rec = {"kind": "point", "method": method, "P": p, "S": s, "G": g, "probe": is_probe}
            if time.perf_counter() - t_start > a.time_budget:
                emit({**rec, "status": "skipped_time_budget"})
                continue
            if key in oom_at and g > oom_at[key]:
                emit({**rec, "status": "skipped_after_oom"})
                continue
            try:
                model.zero_grad(set_to_none=True)
                step = make_step(model, method, p, s, g, device)
                m = measure(step, device, 0 if is_probe else a.warmup, 1 if is_probe else a.iters)
                logical_tokens = g * (p + s)
                rec.update(status="ok", **m, logical_tokens_per_s=logical_tokens / m["step_time_s"],
                           computed_tokens=(p + g * s) if method != "baseline" else logical_tokens)
                results[method] = m
                fits[key] = max(fits.get(key, 0), g)
            except Exception as e:  # noqa: BLE001
                if not is_oom(e):
                    raise
                rec.update(status="oom", error=str(e).splitlines()[0][:200])
                oom_at[key] = min(oom_at.get(key, g), g)
            finally:
                model.zero_grad(set_to_none=True)
                if device.type == "cuda":
                    torch.cuda.empty_cache()
            emit(rec)
        for method in methods:
            if method == "baseline" or method not in results:
                continue
            q = results[method]
            summ = {"kind": "summary", "method": method, **rec_pair, "probe": is_probe, "speedup_measured": None}
            if "baseline" in results:
                b = results["baseline"]
                summ["speedup_measured"] = b["step_time_s"] / q["step_time_s"]
                summ["fraction_of_analytic"] = summ["speedup_measured"] / rec_pair["speedup_bound_analytic"]
                if "peak_mem_gb" in b:
                    summ["peak_mem_ratio"] = q["peak_mem_gb"] / b["peak_mem_gb"]
            else:
                summ["note"] = "baseline did not fit or was skipped"
            if "peak_mem_gb" in q:
                summ["peak_mem_gb"] = q["peak_mem_gb"]
            emit(summ)
    for p in ps:
        for s in ss:
            rec = {"kind": "max_group_size", "P": p, "S": s, "tried_G": gs + probe}
            for method in methods:
                rec[f"max_G_{method}"] = fits.get((p, s, method))
                rec[f"oom_G_{method}"] = oom_at.get((p, s, method))
            emit(rec)
    emit({"kind": "done", "wall_s": time.perf_counter() - t_start})
    print(f"results appended to {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
