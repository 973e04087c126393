"""PPGFlowECG throughput: stage-1 training, stage-2 training, sampling at 10 Euler steps; eager vs torch.compile vs
CUDA graphs, fp32 vs bf16; optionally side by side with the reference implementation in the same run.

    python3 benchmarks/bench_ppgflowecg.py                              # GPU, paper size, batch 256
    python3 benchmarks/bench_ppgflowecg.py --official-repo /path/to/PPGFlowECG   # + the reference code
    python3 benchmarks/bench_ppgflowecg.py --device cpu --tiny          # CPU smoke test (seconds)

Writes one JSON line per measurement to benchmarks/results/ppgflowecg.jsonl (command, GPU, versions, commit).
Only torch is needed besides this repository (the zoo package is imported without the other model families). The
reference code (github.com/PKUDigitalHealth/PPGFlowECG, not vendored) additionally needs einops, scipy and tqdm.
Outputs are compared with fp32 eager on the same weights and noise (``max_abs_diff``/``rel_err`` columns); the
reference is compared with ours after converting its weights (``convert_*_state_dict``).
"""
from __future__ import annotations

import argparse
import datetime
import importlib
import json
import platform
import subprocess
import sys
import time
import types
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def _import_ppgflowecg():
    """zoo.ppgflowecg without importing the other families (their backbones need timm/open_clip/diffusers)."""
    try:
        import zoo  # noqa: F401

        return importlib.import_module("zoo.ppgflowecg")
    except ImportError:
        for k in [k for k in sys.modules if k == "zoo" or k.startswith("zoo.")]:
            del sys.modules[k]
        pkg = types.ModuleType("zoo")
        pkg.__path__ = [str(ROOT / "zoo")]
        sys.modules["zoo"] = pkg
        return importlib.import_module("zoo.ppgflowecg")


P = _import_ppgflowecg()


# ------------------------------------------------------------------------------------------------ objectives
# Same maths as tasks.signal.cardioalign_loss / rectified_flow_loss (kept here so the benchmark needs no Lightning
# or scipy; test_ppgflowecg checks tasks.signal against the reference definitions).
def kl_prior(m, lv):
    return (0.5 * (m.pow(2) + lv.exp() - 1.0 - lv)).sum(1).mean()


def kl_pair(mp, lp, mq, lq):
    return (0.5 * ((lp - lq).exp() + (mq - mp).pow(2) / lq.exp() - 1.0 + lq - lp)).sum(-1).mean()


def stage1_loss(net, ecg, ppg, eps_e, eps_p):
    me, le = net.encoder(ecg)
    mp, lp = net.encoder(ppg)
    ze, zp = (me + (0.5 * le).exp() * eps_e) * P.LATENT_SCALE, (mp + (0.5 * lp).exp() * eps_p) * P.LATENT_SCALE
    re, rp = net.ecg_decoder(ze), net.ppg_decoder(zp)
    align = F.mse_loss(me, mp) + 0.5 * (kl_pair(me, le, mp, lp) + kl_pair(mp, lp, me, le))
    cross = F.mse_loss(net.ecg_decoder(zp.detach()), ecg) + F.mse_loss(net.ppg_decoder(ze.detach()), ppg)
    a, b = F.normalize(me.mean(1), dim=-1), F.normalize(mp.mean(1), dim=-1)
    logits = a @ b.t() / 0.07
    lab = torch.arange(a.shape[0], device=a.device)
    nce = 0.5 * (F.cross_entropy(logits, lab) + F.cross_entropy(logits.t(), lab))
    return (F.mse_loss(re, ecg) + 1e-4 * kl_prior(me, le) + F.mse_loss(rp, ppg) + 1e-4 * kl_prior(mp, lp)
            + 1e-2 * align + 5e-4 * cross + 1e-3 * nce)


def flow_loss(flow, z, c, t, eps):
    """4 t-draws given as (4, B) times and (4, B, C, L) noise (drawn outside so compiled graphs stay pure)."""
    total = 0.0
    for i in range(t.shape[0]):
        tt = t[i].view(-1, 1, 1)
        total = total + F.mse_loss(flow((1 - tt) * eps[i] + tt * z, t[i], c).float(), (z - eps[i]).float())
    return total / t.shape[0]


def sample(net, ppg, eps_post, x0, steps):
    m, lv = net.encoder(ppg)
    cond = (m + (0.5 * lv).exp() * eps_post) * P.LATENT_SCALE
    x, dt = x0, 1.0 / steps
    for i in range(steps):
        x = x + dt * net.flow(x, torch.full((x.shape[0],), i * dt, device=x.device, dtype=x.dtype), cond)
    return net.ecg_decoder(x)


# ------------------------------------------------------------------------------------------------ timing
def sync(dev):
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def timed(fn, dev, warmup, iters):
    t0 = time.perf_counter()
    for _ in range(warmup):
        out = fn()
    sync(dev)
    first = time.perf_counter() - t0
    t0 = time.perf_counter()
    for _ in range(iters):
        out = fn()
    sync(dev)
    return (time.perf_counter() - t0) / iters, first, out


def compare(a, b):
    a, b = a.detach().float(), b.detach().float()
    d = (a - b).abs().max().item()
    return {"max_abs_diff": d, "rel_err": ((a - b).norm() / b.norm().clamp_min(1e-12)).item()}


# ------------------------------------------------------------------------------------------------ benches
def bench_ours(args, dev, emit_row):
    def emit(r):
        if dev.type == "cuda":
            r["peak_mem_gb"] = round(torch.cuda.max_memory_allocated(dev) / 2**30, 2)
            torch.cuda.reset_peak_memory_stats(dev)
        emit_row(r)

    name = "ppgflowecg_tiny" if args.tiny else "ppgflowecg_base"
    torch.manual_seed(0)
    net = getattr(P, name)().to(dev)
    L, B = net.seq_len, args.batch
    lat = net.latent_shape
    g = torch.Generator(device=dev).manual_seed(0)
    ecg = torch.randn(B, 1, L, device=dev, generator=g)
    ppg = torch.randn(B, 1, L, device=dev, generator=g)
    eps_e = torch.randn(B, *lat, device=dev, generator=g)
    eps_p = torch.randn(B, *lat, device=dev, generator=g)
    t4 = torch.rand(4, B, device=dev, generator=g)
    eps4 = torch.randn(4, B, *lat, device=dev, generator=g)
    x0 = torch.randn(B, *lat, device=dev, generator=g)
    ref: dict[str, torch.Tensor] = {}

    for mode in args.modes:
        compiled, bf16 = not mode.startswith("eager"), mode.endswith("bf16")
        cmode = "reduce-overhead" if mode.startswith("cudagraph") else "max-autotune-no-cudagraphs" \
            if mode.startswith("autotune") else None
        ac = torch.autocast(dev.type, dtype=torch.bfloat16, enabled=bf16)
        extra = {"impl": "ours", "model": name, "mode": mode, "batch": B, "compile_mode": cmode}

        # stage 1: full CardioAlign step (both modalities, cross-reconstruction), AdamW. Compute-bound: CUDA graphs
        # are not measured here (compile time only).
        if "stage1" in args.benches and not mode.startswith("cudagraph"):
            params = [p for n, p in net.named_parameters() if not n.startswith("flow.")]
            opt = torch.optim.AdamW(params, lr=1e-12)  # ~no weight change: every mode sees the same weights
            loss_fn = torch.compile(stage1_loss, mode=cmode) if compiled else stage1_loss

            def step1():
                with ac:
                    loss = loss_fn(net, ecg, ppg, eps_e, eps_p)
                loss.backward()
                opt.step()
                opt.zero_grad(set_to_none=True)
                return loss.detach()

            dt, first, loss = timed(step1, dev, args.warmup, args.iters)
            ref.setdefault("stage1", loss)
            emit({"bench": "stage1_train", "pairs_per_s": B / dt, "ms_per_step": dt * 1e3, "first_s": first,
                  "loss": loss.item(), **compare(loss, ref["stage1"]), **extra})
            del opt

        # stage 2: flow step with the frozen encoder inside (as the reference trains) and on latents only
        if "stage2" in args.benches:
            opt = torch.optim.Adam(net.flow.parameters(), lr=1e-12, betas=(0.9, 0.96))
            floss = torch.compile(flow_loss, mode=cmode) if compiled else flow_loss
            enc = torch.compile(net.encoder, mode=cmode) if compiled else net.encoder

            def latents():
                with torch.no_grad(), ac:
                    me, le = enc(ecg)
                    mp, lp = enc(ppg)
                return ((me + (0.5 * le).exp() * eps_e) * P.LATENT_SCALE).float(), \
                    ((mp + (0.5 * lp).exp() * eps_p) * P.LATENT_SCALE).float()

            z_fixed, c_fixed = (x.clone() for x in latents())  # own copies (CUDA-graph outputs are reused)

            def make_step(with_encoder):
                def step2():
                    z, c = latents() if with_encoder else (z_fixed, c_fixed)
                    with ac:
                        loss = floss(net.flow, z, c, t4, eps4)
                    loss.backward()
                    torch.nn.utils.clip_grad_norm_(net.flow.parameters(), 1.0)
                    opt.step()
                    opt.zero_grad(set_to_none=True)
                    return loss.detach()
                return step2

            for tag, with_enc in (("stage2_train_with_encoder", True), ("stage2_train_latents", False)):
                dt, first, loss = timed(make_step(with_enc), dev, args.warmup, args.iters)
                ref.setdefault(tag, loss)
                emit({"bench": tag, "pairs_per_s": B / dt, "ms_per_step": dt * 1e3, "first_s": first,
                      "loss": loss.item(), **compare(loss, ref[tag]), **extra})
            del opt

        # sampling: encode PPG → 10 Euler steps → decode ECG
        if "sample" in args.benches:
            fn = torch.compile(sample, mode=cmode) if compiled else sample

            def run():
                with torch.no_grad(), ac:
                    return fn(net, ppg, eps_p, x0, args.steps)

            dt, first, out = timed(run, dev, args.warmup, args.iters)
            ref.setdefault("sample", out.float().clone())
            emit({"bench": "sample", "euler_steps": args.steps, "windows_per_s": B / dt, "ms_per_batch": dt * 1e3,
                  "first_s": first, **compare(out, ref["sample"]), **extra})
        torch._dynamo.reset()
    return net


def _stub_missing_modules() -> list[str]:
    """The reference modules import einops, scipy and tqdm at the top but the benchmarked paths use only tqdm (a
    progress bar). On a machine without them, stand-ins are installed (and recorded in the results)."""
    stubs = []

    def missing(name):
        try:
            importlib.import_module(name)
            return False
        except ImportError:
            return True

    def unavailable(*a, **k):
        raise RuntimeError("stand-in module: not available on this machine")

    if missing("einops"):
        sys.modules["einops"] = types.SimpleNamespace(rearrange=unavailable, reduce=unavailable, repeat=unavailable)
        stubs.append("einops")
    if missing("scipy"):
        fftpack = types.SimpleNamespace(next_fast_len=unavailable)
        sys.modules["scipy"] = types.SimpleNamespace(fftpack=fftpack)
        sys.modules["scipy.fftpack"] = fftpack
        stubs.append("scipy")
    if missing("tqdm"):
        auto = types.SimpleNamespace(tqdm=lambda it=None, *a, **k: it)
        sys.modules["tqdm"] = types.SimpleNamespace(auto=auto, tqdm=auto.tqdm)
        sys.modules["tqdm.auto"] = auto
        stubs.append("tqdm")
    return stubs


def bench_official(args, dev, emit, ours):
    """The reference implementation as shipped (fp32; anomaly detection on in stage 1, as its train.py does)."""
    repo = Path(args.official_repo).resolve()
    sys.path.insert(0, str(repo))
    stubs = _stub_missing_modules()
    if stubs:
        emit({"bench": "official", "impl": "official", "note": f"stand-ins for missing imports: {stubs}"})
    try:
        cam = importlib.import_module("model.cardioalign_encoder.cardioalign_model")
        rf = importlib.import_module("model.latent_rectified_flow.rectified_flow")
    except Exception as e:  # noqa: BLE001
        emit({"bench": "official", "impl": "official", "error": f"cannot import the reference code: {e!r}"})
        return
    B, L = args.batch, 1280
    torch.manual_seed(0)
    enc, dec_e, dec_p = cam.VAE_Encoder().to(dev), cam.VAE_Decoder().to(dev), cam.VAE_Decoder().to(dev)
    flow = rf.RectifiedFlow(feature_size=4, temporal_size=40, n_layer_enc=4, d_model=256, n_heads=4,
                            mlp_hidden_times=4, attn_pd=0.0, resid_pd=0.0, train_num_points=4).to(dev)
    # equal outputs: load the reference weights into ours and compare forward passes
    ck = {"encoder_ecg": enc.state_dict(), "decoder_ecg": dec_e.state_dict(), "decoder_ppg": dec_p.state_dict()}
    sd = P.convert_stage1_state_dict(ck, ours)
    sd.update(P.convert_stage2_state_dict(flow.state_dict()))
    ours.load_state_dict(sd)
    ours.float().eval()
    g = torch.Generator(device=dev).manual_seed(1)
    ecg = torch.randn(B, 1, L, device=dev, generator=g)
    ppg = torch.randn(B, 1, L, device=dev, generator=g)
    noise = torch.randn(B, 4, 40, device=dev, generator=g)
    with torch.no_grad():
        z_ref, m_ref, _ = enc(ecg.transpose(1, 2), noise)
        m_ours, lv_ours = ours.encoder(ecg)
        z_ours = (m_ours + (0.5 * lv_ours).exp() * noise) * P.LATENT_SCALE
        t = torch.rand(B, device=dev, generator=g)
        v_ref = flow.output(z_ref, t, cond=z_ref)
        v_ours = ours.flow(z_ours, t, z_ours)
        x_ref, x_ours = dec_e(z_ref), ours.ecg_decoder(z_ours).transpose(1, 2)
    emit({"bench": "equivalence", "impl": "ours_vs_official", "batch": B,
          "latent": compare(z_ours, z_ref), "velocity": compare(v_ours, v_ref), "ecg_decoder": compare(x_ours, x_ref)})

    ecg_t, ppg_t = ecg.transpose(1, 2).contiguous(), ppg.transpose(1, 2).contiguous()
    from torch.distributions import Normal, kl_divergence

    def vae_loss(rec, x, mu, lv):
        prior = Normal(torch.zeros_like(mu), torch.ones_like(lv))
        return F.mse_loss(rec, x) + 1e-4 * kl_divergence(Normal(mu, lv.mul(0.5).exp()), prior).sum(1).mean()

    if "stage1" in args.benches:
        params = list(enc.parameters()) + list(dec_e.parameters()) + list(dec_p.parameters())
        opt = torch.optim.AdamW(params, lr=1e-12)

        def step1():  # the reference train_loop body (shared encoder), anomaly detection as shipped
            with torch.autograd.set_detect_anomaly(args.official_anomaly):
                ze, me, le = enc(ecg_t)
                zp, mp, lp = enc(ppg_t)
                re, rp = dec_e(ze), dec_p(zp)
                align = F.mse_loss(me, mp) + 0.5 * (kl_pair(me, le, mp, lp) + kl_pair(mp, lp, me, le))
                cross = F.mse_loss(dec_e(zp.detach()), ecg_t) + F.mse_loss(dec_p(ze.detach()), ppg_t)
                a, b = F.normalize(me.mean(1), dim=-1), F.normalize(mp.mean(1), dim=-1)
                lab = torch.arange(B, device=dev)
                logits = a @ b.t() / 0.07
                nce = 0.5 * (F.cross_entropy(logits, lab) + F.cross_entropy(logits.t(), lab))
                loss = vae_loss(re, ecg_t, me, le) + vae_loss(rp, ppg_t, mp, lp) + 1e-2 * align + 5e-4 * cross \
                    + 1e-3 * nce
                loss.backward()
            opt.step()
            opt.zero_grad()
            return loss.detach()

        dt, first, loss = timed(step1, dev, args.warmup, args.iters)
        emit({"bench": "stage1_train", "impl": "official", "mode": "as-shipped-fp32", "batch": B,
              "anomaly_detection": args.official_anomaly, "pairs_per_s": B / dt, "ms_per_step": dt * 1e3,
              "first_s": first, "loss": loss.item()})
        del opt
    if "stage2" in args.benches:
        enc.eval().requires_grad_(False)
        opt = torch.optim.Adam(flow.parameters(), lr=1e-12, betas=(0.9, 0.96))

        def step2():  # the reference Trainer.train body
            with torch.no_grad():
                z, c = enc(ecg_t)[0], enc(ppg_t)[0]
            loss = flow(x=z, target=z, cond=c)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(flow.parameters(), 1.0)
            opt.step()
            opt.zero_grad()
            return loss.detach()

        dt, first, loss = timed(step2, dev, args.warmup, args.iters)
        emit({"bench": "stage2_train_with_encoder", "impl": "official", "mode": "as-shipped-fp32", "batch": B,
              "pairs_per_s": B / dt, "ms_per_step": dt * 1e3, "first_s": first, "loss": loss.item()})
    if "sample" in args.benches:
        flow.eval()

        def run():  # Trainer.sample_shift body: encode PPG, Euler sampling, decode ECG
            with torch.no_grad():
                c = enc(ppg_t)[0]
                x = flow.sample(shape=c.shape, num_steps=args.steps, cond=c)
                return dec_e(x)

        import contextlib
        import io

        with contextlib.redirect_stderr(io.StringIO()):  # its tqdm bar
            dt, first, _ = timed(run, dev, args.warmup, args.iters)
        emit({"bench": "sample", "impl": "official", "mode": "as-shipped-fp32", "batch": B, "euler_steps": args.steps,
              "windows_per_s": B / dt, "ms_per_batch": dt * 1e3, "first_s": first})


# ------------------------------------------------------------------------------------------------ main
def environment(dev):
    env = {"torch": torch.__version__, "python": platform.python_version(), "host": platform.node(),
           "cuda": torch.version.cuda, "device": str(dev)}
    if dev.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(dev)
        env["cudnn"] = torch.backends.cudnn.version()
        env["cudnn_allow_tf32"] = torch.backends.cudnn.allow_tf32  # convolutions of both implementations
    else:
        env["cpu"] = platform.processor() or platform.machine()
        env["threads"] = torch.get_num_threads()
    try:
        import pytorch_lightning as pl

        env["pytorch_lightning"] = pl.__version__
    except ImportError:
        pass
    try:
        env["commit"] = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                                       text=True, timeout=5).stdout.strip()
    except Exception:  # noqa: BLE001
        pass
    return env


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--tiny", action="store_true", help="ppgflowecg_tiny, batch 4, 2 iterations (smoke test)")
    p.add_argument("--batch", type=int, default=None, help="windows per step (default 256; tiny: 4)")
    p.add_argument("--steps", type=int, default=10, help="Euler steps when sampling")
    p.add_argument("--warmup", type=int, default=None, help="untimed iterations (compilation happens here)")
    p.add_argument("--iters", type=int, default=None, help="timed iterations")
    p.add_argument("--modes", default=None,
                   help="comma list of eager-fp32, eager-bf16, compile-bf16, autotune-bf16, cudagraph-bf16 "
                        "(default: all four but autotune on CUDA; eager-fp32,eager-bf16 on CPU)")
    p.add_argument("--benches", default="stage1,stage2,sample", help="comma list of stage1, stage2, sample")
    p.add_argument("--official-repo", default=None, help="checkout of github.com/PKUDigitalHealth/PPGFlowECG")
    p.add_argument("--official-anomaly", type=int, default=1, help="reference stage 1 with anomaly detection (1)")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "ppgflowecg.jsonl"))
    args = p.parse_args(argv)
    dev = torch.device(args.device)
    args.batch = args.batch or (4 if args.tiny else 256)
    args.warmup = args.warmup if args.warmup is not None else (1 if args.tiny else 2)
    args.iters = args.iters or (2 if args.tiny else 8)
    default_modes = "eager-fp32,eager-bf16,compile-bf16,cudagraph-bf16" if dev.type == "cuda" else \
        "eager-fp32,eager-bf16"
    args.modes = (args.modes or default_modes).split(",")
    args.benches = args.benches.split(",")
    if dev.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = False  # fp32 means fp32 in the comparison
    env = environment(dev)
    cmd = " ".join(["python3", *sys.argv]) if argv is None else "bench_ppgflowecg.main(" + repr(argv) + ")"
    run_id = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    rows = []

    def emit(r):
        r = {**r, "run": run_id, "command": cmd, **env}
        rows.append(r)
        with out.open("a") as f:
            f.write(json.dumps(r, default=str) + "\n")
        keys = ("bench", "impl", "mode", "pairs_per_s", "windows_per_s", "ms_per_step", "ms_per_batch",
                "max_abs_diff", "rel_err", "first_s", "error")
        print(json.dumps({k: (round(v, 4) if isinstance(v, float) else v) for k, v in r.items() if k in keys}),
              flush=True)

    t0 = time.time()
    ours = bench_ours(args, dev, emit)
    if args.official_repo:
        if args.tiny:
            emit({"bench": "official", "impl": "official", "error": "the reference code has paper size only"})
        else:
            bench_official(args, dev, emit, ours)
    print(f"{len(rows)} results in {time.time() - t0:.0f}s -> {out}")
    return rows


if __name__ == "__main__":
    main()
