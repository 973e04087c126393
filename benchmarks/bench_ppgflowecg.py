"""PPGFlowECG throughput: stage-1 training, stage-2 training, sampling at 10 Euler steps; eager vs torch.compile vs
CUDA graphs, fp32 vs bf16; optionally side by side with the reference implementation in the same run.

    python3 benchmarks/bench_ppgflowecg.py --time-budget 510 --official-repo .upstream/PPGFlowECG   # GPU, batch 256
    python3 benchmarks/bench_ppgflowecg.py --device cpu --tiny          # CPU smoke test (seconds)

Modes: ``eager-fp32``, ``eager-bf16``; ``compile-bf16`` (torch.compile of the modules, as the tasks' ``compile``
option does: encoder + decoders in stage 1, flow + frozen encoder in stage 2); ``cudagraph-bf16`` (eager bf16, the
whole stage-2 step and the whole sampling call captured with ``torch.cuda.graph`` and replayed);
``compile-cudagraph-bf16`` (both); ``autotune-bf16`` (compile, max-autotune-no-cudagraphs);
``compile-conv2d-*``, ``autotune-conv2d-bf16`` (those modes with ``zoo.ppgflowecg.conv1d_as_conv2d``: 1-D
convolutions run as channels-last 2-D ones). Stage 1 is compute-bound and is not measured in the CUDA-graph modes.
``sampler-fp32``, ``sampler-bf16``, ``sampler-compile-conv2d-bf16`` measure sampling only, through the model's own
fast path ``zoo.ppgflowecg.StaticSampler`` (fixed batch, static buffers, the whole call as one CUDA graph on CUDA;
the input copy and the output copy are inside the timed call).

Every measurement calls the functions the training tasks use (``tasks.signal.cardioalign_loss``,
``flow_latents``, ``flow_matching_loss``; ``zoo.ppgflowecg.euler_sample``), with the random draws (posterior ε,
flow times and noise, initial noise) fixed outside so every mode sees the same inputs, and optimisers at lr 0 so the
weights never change. Outputs (loss values, sampled waveforms) are compared with fp32 eager on the same weights and
inputs (``max_abs_diff``/``rel_err``); the reference is compared with ours after converting its weights.

One JSON line per measurement is appended to ``--out`` as soon as it is measured. On CUDA each mode (and the
reference code) runs in its own subprocess by default (``--isolate``), killed when it outruns its share of
``--time-budget``: a long compile or a failed graph capture costs that mode's remaining rows only, and the run
records an ``error`` row for it. Needs the repository's requirements (tasks.signal imports Lightning); the reference
code (github.com/PKUDigitalHealth/PPGFlowECG, not vendored) additionally imports einops, scipy and tqdm.
"""
from __future__ import annotations

import argparse
import contextlib
import datetime
import importlib
import io
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import types
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

ALL_MODES = ("eager-fp32", "eager-bf16", "cudagraph-bf16", "compile-cudagraph-bf16", "compile-bf16", "autotune-bf16",
             "compile-conv2d-bf16", "compile-conv2d-cudagraph-bf16", "autotune-conv2d-bf16", "sampler-fp32",
             "sampler-bf16", "sampler-compile-conv2d-bf16")
CUDA_MODES = "eager-fp32,eager-bf16,cudagraph-bf16,compile-bf16,compile-cudagraph-bf16"
BENCH_ORDER = ("stage2", "sample", "stage1")
# compiled modes measure stage 1 first: it is what compilation is for (stage 2 and sampling are launch-bound, which
# the CUDA-graph modes address), so a compile that outruns the time limit costs the less important rows
COMPILED_BENCH_ORDER = ("stage1", "stage2", "sample")


def _import_ppgflowecg():
    """zoo.ppgflowecg without importing the other families when their dependencies (timm, ...) are missing."""
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
S = importlib.import_module("tasks.signal")  # the training tasks' objectives (same functions, same maths)


# ------------------------------------------------------------------------------------------------ timing
def sync(dev):
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def timed(fn, dev, warmup, iters):
    """(mean seconds per call over ``iters``, seconds of the ``warmup`` calls, the last call's return value)."""
    t0 = time.perf_counter()
    for _ in range(warmup):
        fn()
    sync(dev)
    first = time.perf_counter() - t0
    t0 = time.perf_counter()
    out = None
    for _ in range(iters):
        out = fn()
    sync(dev)
    return (time.perf_counter() - t0) / iters, first, out


def compare(a, b):
    a, b = a.detach().float().cpu(), b.detach().float().cpu()
    d = (a - b).abs().max().item()
    return {"max_abs_diff": d, "rel_err": ((a - b).norm() / b.norm().clamp_min(1e-12)).item()}


def capture(step, dev, warmup):
    """Run ``step`` ``warmup`` times on a side stream (cuDNN autotuning, lazy compilation, optimiser state), then
    capture one call into a CUDA graph. Returns (graph, the captured call's outputs: static, refreshed by replay)."""
    s = torch.cuda.Stream(dev)
    s.wait_stream(torch.cuda.current_stream(dev))
    with torch.cuda.stream(s):
        for _ in range(max(warmup, 2)):
            step()
    torch.cuda.current_stream(dev).wait_stream(s)
    sync(dev)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g, capture_error_mode="thread_local"):
        out = step()
    sync(dev)
    return g, out


# ------------------------------------------------------------------------------------------------ ours
class Ours:
    """The model, the fixed inputs of every measurement and the fp32 eager reference outputs."""

    def __init__(self, args, dev):
        self.args, self.dev = args, dev
        self.name = "ppgflowecg_tiny" if args.tiny else "ppgflowecg_base"
        torch.manual_seed(0)
        self.net = getattr(P, self.name)().to(dev)
        L, B, lat, D = self.net.seq_len, args.batch, self.net.latent_shape, args.draws
        g = torch.Generator(device=dev).manual_seed(0)
        self.ecg = torch.randn(B, 1, L, device=dev, generator=g)
        self.ppg = torch.randn(B, 1, L, device=dev, generator=g)
        self.eps_e = torch.randn(B, *lat, device=dev, generator=g)
        self.eps_p = torch.randn(B, *lat, device=dev, generator=g)
        self.t = torch.rand(D, B, device=dev, generator=g)
        self.eps = torch.randn(D, B, *lat, device=dev, generator=g)
        self.x0 = torch.randn(B, *lat, device=dev, generator=g)
        self.eps_ep = torch.cat([self.eps_e, self.eps_p])
        self._refs: dict[str, torch.Tensor] = {}

    # the three computations, on given modules (plain or compiled)
    def stage1_loss(self, stage1):
        return S.cardioalign_loss(stage1, self.ecg, self.ppg, noise=(self.eps_e, self.eps_p))["loss"]

    def latents(self, encoder):
        return S.flow_latents(encoder, self.ecg, self.ppg, noise=self.eps_ep)

    def stage2_loss(self, flow, z, c):
        return S.flow_matching_loss(flow, z, c, self.t, self.eps)

    def sample(self, encoder, flow, decoder):
        cond = P.PPGFlowECG.reparameterize(*encoder(self.ppg), noise=self.eps_p)
        return decoder(P.euler_sample(flow, cond, self.args.steps, noise=self.x0))

    def ref(self, key):
        """fp32 eager output of ``key`` (stage1/stage2/sample), shared through ``--ref-file`` by isolated modes."""
        path = Path(self.args.ref_file) if self.args.ref_file else None
        if key not in self._refs and path is not None and path.is_file():
            self._refs.update(torch.load(path, map_location="cpu", weights_only=True))
        if key not in self._refs:
            net = self.net
            with torch.no_grad():
                if key == "stage1":
                    v = self.stage1_loss(net)
                elif key == "stage2":
                    v = self.stage2_loss(net.flow, *self.latents(net.encoder))
                else:
                    v = self.sample(net.encoder, net.flow, net.ecg_decoder)
            self._refs[key] = v.detach().float().cpu()
            if path is not None:
                torch.save(self._refs, path)
        return self._refs[key]


def bench_ours(args, dev, emit_row, ours=None):
    ours = ours or Ours(args, dev)
    net, B = ours.net, args.batch

    def emit(r):
        if dev.type == "cuda":
            r["peak_mem_gb"] = round(torch.cuda.max_memory_allocated(dev) / 2**30, 2)
            torch.cuda.reset_peak_memory_stats(dev)
        emit_row(r)

    for mode in args.modes:
        bf16, graph = mode.endswith("bf16"), "cudagraph" in mode
        compiled = mode.startswith(("compile", "autotune"))
        cmode = "max-autotune-no-cudagraphs" if mode.startswith("autotune") else None
        # under CUDA-graph capture the autocast weight-cast cache must be off (the graph must cast on every replay)
        ac = torch.autocast(dev.type, dtype=torch.bfloat16, enabled=bf16, cache_enabled=not graph)
        extra = {"impl": "ours", "model": ours.name, "mode": mode, "batch": B, "compile_mode": cmode if compiled else
                 None, "cuda_graph": graph, "conv1d_as_conv2d": "conv2d" in mode}
        P.conv1d_as_conv2d(ours.net, "conv2d" in mode)
        if mode.startswith("sampler"):
            extra.update(cuda_graph=dev.type == "cuda", compile_mode="default" if "compile" in mode else None)
            if "sample" in args.benches:
                t_start = time.perf_counter()
                try:
                    for r, out in _static_sample(ours, dev, args, bf16, "compile" in mode):
                        key = r.pop("ref")
                        emit({**r, **compare(out, ours.ref(key)), **extra})
                except Exception as e:  # noqa: BLE001
                    emit({"bench": "sample", "error": f"{type(e).__name__}: {e}"[:2000],
                          "seconds_before_error": round(time.perf_counter() - t_start, 1), **extra})
            torch._dynamo.reset()
            continue
        if graph and dev.type != "cuda":
            emit_row({"bench": "all", "error": "CUDA graphs need a CUDA device", **extra})
            continue

        def comp(fn, compiled=compiled, cmode=cmode):
            return torch.compile(fn, mode=cmode) if compiled else fn

        for bench in [b for b in (COMPILED_BENCH_ORDER if compiled else BENCH_ORDER) if b in args.benches]:
            t_start = time.perf_counter()
            try:
                if bench == "stage1":
                    if graph:  # compute-bound: launch overhead is negligible there
                        continue
                    rows = _stage1(ours, dev, args, ac, cmode if compiled else False, "conv2d" in mode)
                elif bench == "stage2":
                    rows = _stage2(ours, dev, args, ac, comp, graph)
                else:
                    rows = _sample(ours, dev, args, ac, comp, graph)
                for r, out in rows:
                    key = r.pop("ref")
                    emit({**r, **compare(out, ours.ref(key)), **extra})
            except Exception as e:  # noqa: BLE001 - one failed measurement must not lose the others
                emit({"bench": bench, "error": f"{type(e).__name__}: {e}"[:2000],
                      "seconds_before_error": round(time.perf_counter() - t_start, 1), **extra})
            finally:
                if dev.type == "cuda":
                    sync(dev)
                    torch.cuda.empty_cache()
        torch._dynamo.reset()
    return net


def _stage1(ours, dev, args, ac, cmode, conv2d):
    """Full CardioAlign step (both modalities, cross-reconstruction), AdamW."""
    net, B = ours.net, args.batch
    # what CardioAlignTask(compile=..., conv1d_as_conv2d=...) runs
    stage1 = S._CompiledStage1(net, cmode, conv2d) if cmode is not False else net
    params = [p for n, p in net.named_parameters() if not n.startswith("flow.")]
    opt = torch.optim.AdamW(params, lr=0.0, fused=True if params[0].is_cuda else None)  # as CardioAlignTask

    def step():
        with ac:
            loss = ours.stage1_loss(stage1)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss.detach()

    t0 = time.perf_counter()
    dt, _, loss = timed(step, dev, args.warmup, args.iters)
    first = time.perf_counter() - t0 - dt * args.iters
    r = {"bench": "stage1_train", "pairs_per_s": B / dt, "ms_per_step": dt * 1e3, "first_s": first,
         "loss": loss.item(), "ref": "stage1"}
    return [(r, loss)]


def _stage2(ours, dev, args, ac, comp, graph):
    """Flow step with the frozen encoder inside (as the reference trains) and on fixed latents only."""
    net, B = ours.net, args.batch
    flow, enc = comp(net.flow), comp(net.encoder)  # what ECGFlowTask(compile=...) compiles
    opt = torch.optim.Adam(net.flow.parameters(), lr=0.0, betas=(0.9, 0.96), capturable=graph)
    t0 = time.perf_counter()
    with torch.no_grad(), ac:
        z_fixed, c_fixed = (x.clone() for x in ours.latents(enc))
    rows = []
    for tag, with_enc in (("stage2_train_with_encoder", True), ("stage2_train_latents", False)):
        def step(with_enc=with_enc):
            if with_enc:
                with torch.no_grad(), ac:
                    z, c = ours.latents(enc)
            else:
                z, c = z_fixed, c_fixed
            with ac:
                loss = ours.stage2_loss(flow, z, c)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(net.flow.parameters(), 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)
            return loss.detach()

        if graph:
            g, loss = capture(step, dev, args.warmup)
            dt, _, _ = timed(g.replay, dev, 1, args.iters)
        else:
            dt, _, loss = timed(step, dev, args.warmup, args.iters)
        first = time.perf_counter() - t0 - dt * args.iters  # warm-up (compilation, capture) before the timed calls
        r = {"bench": tag, "pairs_per_s": B / dt, "ms_per_step": dt * 1e3, "first_s": first, "loss": loss.item(),
             "t_draws": args.draws, "ref": "stage2"}
        rows.append((r, loss.clone()))
        if graph:
            del g
        t0 = time.perf_counter()
    return rows


def _sample(ours, dev, args, ac, comp, graph):
    """Encode PPG → ``steps`` Euler steps of the flow → ECG decoder."""
    net, B = ours.net, args.batch
    enc, flow, dec = comp(net.encoder), comp(net.flow), comp(net.ecg_decoder)

    def run():
        with torch.no_grad(), ac:
            return ours.sample(enc, flow, dec)

    t0 = time.perf_counter()
    if graph:
        g, out = capture(run, dev, args.warmup)
        dt, _, _ = timed(g.replay, dev, 1, args.iters)
    else:
        dt, _, out = timed(run, dev, args.warmup, args.iters)
    first = time.perf_counter() - t0 - dt * args.iters
    r = {"bench": "sample", "euler_steps": args.steps, "windows_per_s": B / dt, "ms_per_batch": dt * 1e3,
         "first_s": first, "ref": "sample"}
    return [(r, out.float().clone())]


def _static_sample(ours, dev, args, bf16, compiled):
    """``zoo.ppgflowecg.StaticSampler`` on the same inputs and draws as ``_sample`` (encode → Euler → decode)."""
    net, B = ours.net, args.batch
    sampler = P.StaticSampler(net, B, steps=args.steps, dtype=torch.bfloat16 if bf16 else None, compile=compiled,
                              warmup=args.warmup)
    noise = (ours.eps_p, ours.x0)
    t0 = time.perf_counter()
    sampler(ours.ppg, noise=noise)  # capture (after the warm-up calls) on CUDA
    sync(dev)
    first = time.perf_counter() - t0
    dt, _, out = timed(lambda: sampler(ours.ppg, noise=noise), dev, 1, args.iters)
    r = {"bench": "sample", "euler_steps": args.steps, "windows_per_s": B / dt, "ms_per_batch": dt * 1e3,
         "first_s": first, "static_sampler": True, "ref": "sample"}
    return [(r, out)]


# ------------------------------------------------------------------------------------------------ reference code
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


def bench_official(args, dev, emit, ours=None):
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
    if ours is None:
        torch.manual_seed(0)
        ours = P.ppgflowecg_base().to(dev)
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
        z_ref, _, _ = enc(ecg.transpose(1, 2), noise)
        m_ours, lv_ours = ours.encoder(ecg)
        z_ours = P.PPGFlowECG.reparameterize(m_ours, lv_ours, noise=noise)
        t = torch.rand(B, device=dev, generator=g)
        v_ref = flow.output(z_ref, t, cond=z_ref)
        v_ours = ours.flow(z_ours, t, z_ours)
        x_ref, x_ours = dec_e(z_ref), ours.ecg_decoder(z_ours).transpose(1, 2)
    emit({"bench": "equivalence", "impl": "ours_vs_official", "batch": B,
          "latent": compare(z_ours, z_ref), "velocity": compare(v_ours, v_ref), "ecg_decoder": compare(x_ours, x_ref)})
    del ours
    if dev.type == "cuda":
        torch.cuda.empty_cache()

    ecg_t, ppg_t = ecg.transpose(1, 2).contiguous(), ppg.transpose(1, 2).contiguous()
    from torch.distributions import Normal, kl_divergence

    def vae_loss(rec, x, mu, lv):
        prior = Normal(torch.zeros_like(mu), torch.ones_like(lv))
        return F.mse_loss(rec, x) + 1e-4 * kl_divergence(Normal(mu, lv.mul(0.5).exp()), prior).sum(1).mean()

    def kl_pair(mp, lp, mq, lq):
        return (0.5 * ((lp - lq).exp() + (mq - mp).pow(2) / lq.exp() - 1.0 + lq - lp)).sum(-1).mean()

    def guarded(bench, fn):
        t0 = time.perf_counter()
        try:
            fn()
        except Exception as e:  # noqa: BLE001
            emit({"bench": bench, "impl": "official", "mode": "as-shipped-fp32", "error": f"{type(e).__name__}: {e}"
                  [:2000], "seconds_before_error": round(time.perf_counter() - t0, 1)})
        if dev.type == "cuda":
            torch.cuda.empty_cache()

    def stage2():
        enc.eval().requires_grad_(False)
        opt = torch.optim.Adam(flow.parameters(), lr=1e-12, betas=(0.9, 0.96))

        def step2():  # the reference Trainer.train body (its per-step loss.item() included; EMA/scheduler left out)
            with torch.no_grad():
                z, c = enc(ecg_t)[0], enc(ppg_t)[0]
            loss = flow(x=z, target=z, cond=c)
            loss.backward()
            loss.item()
            torch.nn.utils.clip_grad_norm_(flow.parameters(), 1.0)
            opt.step()
            opt.zero_grad()
            return loss.detach()

        dt, first, loss = timed(step2, dev, args.warmup, args.iters)
        emit({"bench": "stage2_train_with_encoder", "impl": "official", "mode": "as-shipped-fp32", "batch": B,
              "pairs_per_s": B / dt, "ms_per_step": dt * 1e3, "first_s": first, "loss": loss.item(),
              "host_sync_per_step": True})

    def sample():
        flow.eval()
        enc.eval()
        dec_e.eval()

        def run():  # Trainer.sample_shift body: encode PPG, Euler sampling, decode ECG
            with torch.no_grad():
                c = enc(ppg_t)[0]
                x = flow.sample(shape=c.shape, num_steps=args.steps, cond=c)
                return dec_e(x)

        with contextlib.redirect_stderr(io.StringIO()):  # its tqdm bar
            dt, first, _ = timed(run, dev, args.warmup, args.iters)
        emit({"bench": "sample", "impl": "official", "mode": "as-shipped-fp32", "batch": B, "euler_steps": args.steps,
              "windows_per_s": B / dt, "ms_per_batch": dt * 1e3, "first_s": first})

    def stage1():
        enc.train().requires_grad_(True)
        dec_e.train()
        params = list(enc.parameters()) + list(dec_e.parameters()) + list(dec_p.parameters())
        opt = torch.optim.AdamW(params, lr=1e-12)

        def step1():  # the reference train_loop body (shared encoder), anomaly detection as shipped
            with torch.autograd.set_detect_anomaly(bool(args.official_anomaly)):
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
              "anomaly_detection": bool(args.official_anomaly), "pairs_per_s": B / dt, "ms_per_step": dt * 1e3,
              "first_s": first, "loss": loss.item()})

    for bench in [b for b in BENCH_ORDER if b in args.benches]:
        guarded(bench, {"stage1": stage1, "stage2": stage2, "sample": sample}[bench])


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
    from tasks.bench import git_commit

    commit, dirty = git_commit()
    env["commit"] = commit[:7] + ("-dirty" if dirty else "") if len(commit) == 40 else commit
    return env


def _parser():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--tiny", action="store_true", help="ppgflowecg_tiny, batch 4, 2 iterations (smoke test)")
    p.add_argument("--batch", type=int, default=None, help="windows per step (default 256; tiny: 4)")
    p.add_argument("--steps", type=int, default=10, help="Euler steps when sampling")
    p.add_argument("--draws", type=int, default=4, help="flow-time draws per stage-2 step (reference: 4)")
    p.add_argument("--warmup", type=int, default=None, help="untimed calls (compilation, cuDNN autotuning; default 3)")
    p.add_argument("--iters", type=int, default=None, help="timed calls (default 10)")
    p.add_argument("--modes", default=None, help=f"comma list of {', '.join(ALL_MODES)} (default on CUDA: "
                   f"{CUDA_MODES}; on CPU: eager-fp32,eager-bf16)")
    p.add_argument("--benches", default="stage1,stage2,sample", help="comma list of stage1, stage2, sample")
    p.add_argument("--official-repo", default=None, help="checkout of github.com/PKUDigitalHealth/PPGFlowECG")
    p.add_argument("--official-anomaly", type=int, default=1, help="reference stage 1 with anomaly detection (1)")
    p.add_argument("--official-only", action="store_true", help="only the reference code (needs --official-repo)")
    p.add_argument("--isolate", type=int, default=None,
                   help="each mode and the reference code in its own subprocess (default: 1 on CUDA, 0 on CPU)")
    p.add_argument("--time-budget", type=float, default=0,
                   help="seconds for the whole run with --isolate (0: none): a subprocess still running when the "
                        "budget is spent is killed, and modes not started are recorded as skipped")
    p.add_argument("--unit-timeout", type=float, default=0, help="seconds at most per subprocess (0: no cap)")
    p.add_argument("--ref-file", default=None, help=argparse.SUPPRESS)  # fp32 reference outputs shared by subprocesses
    p.add_argument("--run-id", default=None, help=argparse.SUPPRESS)
    p.add_argument("--command", default=None, help=argparse.SUPPRESS)
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "ppgflowecg.jsonl"))
    return p


def _run_isolated(argv, args, emit, t0):
    """Each mode, then the reference code, in a subprocess of its own (official after the cheap modes, before the
    compiled ones, so a long compile cannot cost the side-by-side rows)."""
    units = [[m] for m in args.modes]
    if args.official_repo:  # after the eager and CUDA-graph modes, before the first compiled one
        at = next((i for i, u in enumerate(units) if "compile" in u[0] or "autotune" in u[0]), len(units))
        units.insert(at, ["official"])
    base = [a for a in (argv if argv is not None else sys.argv[1:])]
    base = _strip_args(base, ("--modes", "--isolate", "--time-budget", "--unit-timeout", "--official-only",
                              "--official-repo", "--ref-file", "--run-id", "--command", "--out"))
    tmp = tempfile.mkdtemp(prefix="bench_ppgflowecg_")
    ref = str(Path(tmp) / "refs.pt")
    for unit in units:
        name = unit[0]
        left = (t0 + args.time_budget - time.time()) if args.time_budget else float("inf")
        timeout = min(left, args.unit_timeout or float("inf"))
        tag = {"bench": "all", "impl": "official" if name == "official" else "ours", "mode": name}
        if timeout < 15:
            emit({**tag, "error": f"skipped: {max(left, 0):.0f}s of the time budget left"})
            continue
        child = [sys.executable, "-u", str(Path(__file__).resolve()), *base, "--isolate", "0", "--ref-file", ref,
                 "--run-id", args.run_id, "--command", args.command, "--out", args.out]
        child += ["--official-only", "--official-repo", args.official_repo] if name == "official" else \
            ["--modes", name]
        print(f"--- {name} (timeout {timeout:.0f}s)", flush=True)
        start = time.time()
        proc = subprocess.Popen(child, start_new_session=True)  # its own group: compile workers die with it
        try:
            rc = proc.wait(timeout=None if timeout == float("inf") else timeout)
            if rc:
                emit({**tag, "error": f"subprocess exited with {rc} after {time.time() - start:.0f}s (rows written "
                                      "before are kept)"})
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            out = Path(args.out)
            if out.is_file() and out.stat().st_size and not out.read_bytes().endswith(b"\n"):
                with out.open("a") as f:  # a line cut by the kill stays a (skipped) line of its own
                    f.write("\n")
            emit({**tag, "error": f"killed at its time limit ({timeout:.0f}s); rows written before are kept"})
    shutil.rmtree(tmp, ignore_errors=True)


def _strip_args(argv, names):
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
            continue
        key = a.split("=", 1)[0]
        if key in names:
            skip = "=" not in a and key != "--official-only"
            continue
        out.append(a)
    return out


def main(argv=None):
    args = _parser().parse_args(argv)
    dev = torch.device(args.device)
    args.batch = args.batch or (4 if args.tiny else 256)
    args.warmup = args.warmup if args.warmup is not None else (1 if args.tiny else 3)
    args.iters = args.iters or (2 if args.tiny else 10)
    args.modes = (args.modes or (CUDA_MODES if dev.type == "cuda" else "eager-fp32,eager-bf16")).split(",")
    bad = [m for m in args.modes if m not in ALL_MODES]
    if bad:
        raise SystemExit(f"unknown modes {bad}; choose from {ALL_MODES}")
    args.benches = args.benches.split(",")
    isolate = args.isolate if args.isolate is not None else int(dev.type == "cuda")
    if isolate and args.official_only:
        isolate = 0
    args.command = args.command or (" ".join(["python3", *sys.argv]) if argv is None else
                                    "bench_ppgflowecg.main(" + repr(argv) + ")")
    args.run_id = args.run_id or datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    if dev.type == "cuda" and not isolate:
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = False  # fp32 means fp32 in the comparison
        # fixed shapes: compile each shape statically (a module seen at a second batch size, e.g. the encoder at 2B
        # in stage 2 and B in stage 1, would otherwise be recompiled with dynamic shapes)
        torch._dynamo.config.automatic_dynamic_shapes = False
        torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, 32)
    env = environment(dev) if not isolate else {"device": str(dev)}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    rows = []

    def emit(r):
        r = {**r, "run": args.run_id, "command": args.command, **env}
        rows.append(r)
        with out.open("a") as f:
            f.write(json.dumps(r, default=str) + "\n")
        keys = ("bench", "impl", "mode", "pairs_per_s", "windows_per_s", "ms_per_step", "ms_per_batch",
                "max_abs_diff", "rel_err", "first_s", "error")
        print(json.dumps({k: (round(v, 4) if isinstance(v, float) else v) for k, v in r.items() if k in keys}),
              flush=True)

    t0 = time.time()
    if isolate:
        _run_isolated(argv, args, emit, t0)
        rows = []
        for line in out.read_text().splitlines():
            with contextlib.suppress(json.JSONDecodeError):
                rows.append(json.loads(line))
        rows = [r for r in rows if isinstance(r, dict) and r.get("run") == args.run_id]
        _summary(rows)
    elif args.official_only:
        if args.tiny or not args.official_repo:
            emit({"bench": "official", "impl": "official", "error": "the reference code needs --official-repo and has "
                  "paper size only (no --tiny)"})
        else:
            bench_official(args, dev, emit)
    else:
        ours = bench_ours(args, dev, emit)
        if args.official_repo:
            if args.tiny:
                emit({"bench": "official", "impl": "official", "error": "the reference code has paper size only"})
            else:
                bench_official(args, dev, emit, ours)
    print(f"{len(rows)} results in {time.time() - t0:.0f}s -> {out}")
    return rows


def _summary(rows):
    """A short table of the run (the device tool returns the end of the output)."""
    official = {r["bench"]: r.get("pairs_per_s") or r.get("windows_per_s") for r in rows
                if r.get("impl") == "official" and (r.get("pairs_per_s") or r.get("windows_per_s"))}
    print("\nbench                      impl      mode                     rate        ms  x_official  max_abs_diff")
    for r in rows:
        rate = r.get("pairs_per_s") or r.get("windows_per_s")
        ms = r.get("ms_per_step") or r.get("ms_per_batch")
        if r.get("bench") == "equivalence":
            print(f"{'equivalence (fp32)':26} {'ours/ref':9} max_abs_diff latent {r['latent']['max_abs_diff']:.3g}, "
                  f"velocity {r['velocity']['max_abs_diff']:.3g}, ECG decoder {r['ecg_decoder']['max_abs_diff']:.3g}")
            continue
        if rate is None:
            if r.get("error"):
                print(f"{r.get('bench', '')[:26]:26} {r.get('impl', '')[:9]:9} {r.get('mode', '')[:24]:24} ERROR "
                      f"{r['error'][:80]}")
            continue
        d, ref = r.get("max_abs_diff"), official.get(r["bench"])
        x = f"{rate / ref:10.2f}" if ref and r.get("impl") == "ours" else " " * 10
        print(f"{r['bench'][:26]:26} {r.get('impl', '')[:9]:9} {r.get('mode', '')[:24]:24} {rate:9.0f} {ms:9.2f}"
              f"  {x}  {'' if d is None else f'{d:.3g}'}")


if __name__ == "__main__":
    main()
