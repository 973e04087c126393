"""Where does FusionReID's compiled + whole-step-CUDA-graph training drift from compiled training? (issue 24, item 4)

Runs several copies of ``ReIDTask`` from one identical state on the same fixed P x K batches, step by step in
lock-step, each through ``ReIDTask.bench_train_step`` (the manual-optimisation path of ``cuda_graphs``: warm-up steps,
capture, replays; a plain eager step where graphs are off), and after every step writes the max abs (and relative)
difference of the loss, the logged statistics and every named tensor -- ``param.*``, ``buffer.*`` (BatchNorm
running_mean/var, num_batches_tracked), ``grad.*``, ``momentum.*`` (SGD momentum buffers) -- of each run against its
reference run. The runs (``--runs``):

================== ========= =========== ===================================================================
run                compile   cuda_graphs autocast cache / note
================== ========= =========== ===================================================================
eager              no        no          on (Lightning's autocast)
eager2             no        no          on: the eager-vs-eager noise
graphed            no        yes         off (the graph path's own autocast: ``graph_autocast``)
compiled           yes       no          on: the test's compiled reference
compiled2          yes       no          on: the compiled-vs-compiled noise (shares ``compiled``'s compilation)
compiled_nocache   yes       no          off, as the graph path: dynamo guards on the flag, so this is the
                                         graph path's own compilation without a graph
compiled_graphlike yes       no          off, and the lr a 0-d fp32 CUDA tensor from the start, as the captured
                                         fused SGD reads it: everything the graph path changes but the graph
compiled_graphed   yes       yes         off: the path under suspicion
================== ========= =========== ===================================================================

Pairs (run ~ reference): eager2~eager, graphed~eager, compiled~eager, compiled2~compiled, compiled_nocache~compiled
(another compilation), compiled_graphlike~compiled (another compilation + the tensor lr),
compiled_graphed~compiled_graphlike (the graph alone), compiled_graphed~compiled_nocache and compiled_graphed~compiled
(what tests/test_reid_cuda_graphs.py compares). A pair diverges at the first step where a tensor's difference exceeds
``--factor`` x its noise (eager2~eager or compiled2~compiled, same tensor, same step) + ``--floor``; the summary
names that step and the tensors, worst first.

``--order sequential`` runs each run to the end before the next (the GPU test's order: the graphed fit first, then
the compiled ones), keeping CPU copies of every step's tensors, so that each run's compilations happen with dynamo's
recompilation state as the earlier runs left it (with ``--eval-batch`` of another size than the training batch, an
eval shape change marks the batch dimension dynamic and later compilations of the network are dynamic-shape ones).
Pair ``compiled2~compiled`` then shares one compilation while ``compiled~compiled_graphed`` may not.

``--resync`` copies the first run's parameters, buffers and momentum into every other run after each step (in place,
so a captured graph keeps reading them): each step's differences are then one step's from one state, not the
accumulated chaos of 12 steps at lr 0.02. ``--deterministic``: cuDNN deterministic, math SDPA, no SIE (no atomics in
the camera-embedding gather), ``torch.use_deterministic_algorithms(warn_only)``, inductor's deterministic mode (no
on-device benchmarking, so two compilations pick the same kernels). ``--tensor-lr``: every run's lr is a 0-d fp32
CUDA tensor from the start (as the captured fused SGD reads it), so float-vs-tensor lr is not a difference.

GPU (one device call, see benchmarks/reid_graph_drift_h200.sh)::

    python3 benchmarks/reid_graph_drift.py --tiny --precision bf16-mixed --steps 12 --out DIR
    python3 benchmarks/reid_graph_drift.py --tiny --precision bf16-mixed --steps 12 --resync --deterministic \
        --tensor-lr --out DIR

CPU (the code path only; no graph capture: graphed runs fall back to eager steps and are dropped by default)::

    python3 benchmarks/reid_graph_drift.py --tiny --device cpu --steps 3 --backend aot_eager --out /tmp/drift

Writes ``DIR/steps.jsonl`` (one ``{"kind": "pair", ...}`` line per step and pair with every named difference, one
``{"kind": "run", ...}`` line per step and run: loss, lr, recompiles, tensors whose storage moved) and
``DIR/summary.json`` (settings, per pair the first diverging step and tensors, the last step's state difference).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tasks.bench import git_commit  # noqa: E402

#: name: (compile, cuda_graphs, autocast cache off, lr a 0-d fp32 CUDA tensor from the start)
RUNS: dict[str, tuple[bool, bool, bool, bool]] = {
    "eager": (False, False, False, False),
    "eager2": (False, False, False, False),
    "graphed": (False, True, False, False),
    "compiled": (True, False, False, False),
    "compiled2": (True, False, False, False),
    "compiled_nocache": (True, False, True, False),
    "compiled_graphlike": (True, False, True, True),
    "compiled_graphed": (True, True, False, False),
}
#: (run, reference) in report order
PAIRS: tuple[tuple[str, str], ...] = (
    ("eager2", "eager"), ("graphed", "eager"), ("compiled", "eager"), ("compiled2", "compiled"),
    ("compiled_nocache", "compiled"), ("compiled_graphlike", "compiled"), ("compiled_graphed", "compiled_graphlike"),
    ("compiled_graphed", "compiled_nocache"), ("compiled_graphed", "compiled"),
)
#: the noise pair for a reference run
NOISE: dict[str, tuple[str, str]] = {"eager": ("eager2", "eager"), "compiled": ("compiled2", "compiled"),
                                     "compiled_nocache": ("compiled2", "compiled"),
                                     "compiled_graphlike": ("compiled2", "compiled")}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tiny", action="store_true", help="fusionreid_tiny at the GPU test's sizes (batch 16 = 4 x 4, "
                   "64x32, 4 ids, 2 cameras); else --model at 256x128, 751 ids, 6 cameras")
    p.add_argument("--model", default="fusionreid_vitb16_r50")
    p.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    p.add_argument("--precision", default="bf16-mixed", choices=("bf16-mixed", "32-true"))
    p.add_argument("--steps", type=int, default=12)
    p.add_argument("--batch", type=int, default=None, help="batch size (default 16 tiny, 64 otherwise)")
    p.add_argument("--num-instances", type=int, default=4, help="K images per identity in a batch")
    p.add_argument("--lr", type=float, default=0.02, help="SGD lr (the GPU test's 0.02)")
    p.add_argument("--warmup-epochs", type=int, default=1, help="the task's warm-up epochs (the GPU test's 1: the "
                   "first epoch's lr is the cosine's at t = 1, 0.017 for lr 0.02)")
    p.add_argument("--epochs", type=int, default=4, help="the task's schedule length (the GPU test's 4)")
    p.add_argument("--lr-change-at", type=int, default=6, help="step before which group 0's lr is halved by "
                   "assigning a float, as timm's schedule does at an epoch end (-1: never)")
    p.add_argument("--eval-at", type=int, default=6, help="step before which every run embeds a batch in eval mode "
                   "under inference_mode, as validation does between epochs (-1: never)")
    p.add_argument("--eval-batch", type=int, default=None, help="a second eval batch size (default: the training "
                   "batch only); another size makes dynamo mark the batch dimension dynamic for later compilations, as "
                   "a short last validation batch does in the GPU test")
    p.add_argument("--order", default="lockstep", choices=("lockstep", "sequential"),
                   help="step all runs together, or each run to the end before the next (the GPU test's order)")
    p.add_argument("--runs", default=None, help="comma-separated runs (default: all; on CPU the graph-free ones)")
    p.add_argument("--backend", default="inductor", help="torch.compile backend (aot_eager for a fast CPU check)")
    p.add_argument("--resync", action="store_true", help="copy the first run's state into the others after each step")
    p.add_argument("--deterministic", action="store_true", help="deterministic kernels and no SIE (see above)")
    p.add_argument("--tensor-lr", action="store_true", help="every run's lr as a 0-d fp32 CUDA tensor from the start")
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--factor", type=float, default=4.0, help="divergence: diff > factor x noise + floor")
    p.add_argument("--floor", type=float, default=None, help="absolute floor (default 1e-5 fp32, 1e-3 bf16)")
    p.add_argument("--top", type=int, default=3, help="tensors printed per pair and step")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="benchmarks/results/reid_graph_drift")
    a = p.parse_args(argv)
    if a.tiny:
        a.model = "fusionreid_tiny"
    if a.batch is None:
        a.batch = 16 if a.tiny else 64
    if a.eval_batch is None:
        a.eval_batch = a.batch
    if a.floor is None:
        a.floor = 1e-5 if a.precision == "32-true" else 1e-3
    return a


def select_runs(spec: str | None, device: str) -> list[str]:
    """The runs to make: ``RUNS`` order by default, else the order given (the first is the ``--resync`` source; in
    ``--order sequential`` the order they run in)."""
    if spec is None:
        return [r for r, (_, graphs, _, _) in RUNS.items() if device == "cuda" or not graphs]
    names = list(dict.fromkeys(s.strip() for s in spec.split(",") if s.strip()))
    unknown = [n for n in names if n not in RUNS]
    if unknown:
        raise SystemExit(f"unknown runs {unknown}; choose from {list(RUNS)}")
    return names


def make_batches(a: argparse.Namespace, num_classes: int, num_cameras: int, img: tuple[int, int],
                 device: torch.device) -> list[dict[str, torch.Tensor]]:
    """``--steps`` fixed P x K batches (normal images, P distinct ids of K images each, random cameras)."""
    if a.batch % a.num_instances:
        raise SystemExit(f"--batch {a.batch} is not a multiple of --num-instances {a.num_instances}")
    g = torch.Generator().manual_seed(a.seed + 1)
    ids = a.batch // a.num_instances
    out = []
    for _ in range(a.steps):
        pids = torch.randperm(num_classes, generator=g)[:ids].repeat_interleave(a.num_instances)
        out.append({"image": torch.randn(a.batch, 3, *img, generator=g).to(device), "pid": pids.to(device),
                    "camid": torch.randint(0, max(num_cameras, 1), (a.batch,), generator=g).to(device)})
    return out


def build_tasks(a: argparse.Namespace, runs: list[str], device: torch.device) -> dict[str, Any]:
    """One ``ReIDTask`` per run, all holding the first one's initial state."""
    from tasks.reid import ReIDTask, reid_losses

    kw: dict[str, Any] = {"num_classes": 4, "num_cameras": 2} if a.tiny else \
        {"num_classes": 751, "num_cameras": 6, "pretrained_backbone": False}
    torch.manual_seed(a.seed)
    tasks: dict[str, Any] = {}
    for r in runs:
        compile_, graphs, _, _ = RUNS[r]
        task = ReIDTask(a.model, model_kwargs=kw, lr=a.lr, warmup_epochs=a.warmup_epochs, epochs=a.epochs,
                        compile=compile_, cuda_graphs=graphs,
                        use_camids=not a.deterministic, channels_last=a.channels_last)
        if compile_ and a.backend != "inductor":  # the task compiles with inductor; swap in the asked backend
            object.__setattr__(task, "_compiled", torch.compile(task.net, backend=a.backend))
            task._loss_fn = torch.compile(reid_losses, backend=a.backend)
        if tasks:
            task.net.load_state_dict(next(iter(tasks.values())).net.state_dict())
        tasks[r] = task.to(device).train()
    return tasks


def autocast_for(a: argparse.Namespace, device: torch.device, cache_off: bool) -> contextlib.AbstractContextManager:
    """The step's autocast: Lightning's (cache on) or the graph path's (``graph_autocast``: cache off)."""
    if a.precision == "32-true":
        return torch.autocast(device.type, enabled=False, cache_enabled=False) if cache_off else \
            contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16, cache_enabled=not cache_off)


def optimizer(task: Any) -> torch.optim.Optimizer:
    if task._bench_opt is None:
        task._bench_opt = task.configure_optimizers()["optimizer"]
    return task._bench_opt


def named_tensors(task: Any) -> dict[str, torch.Tensor]:
    """Every tensor of a run's training state, named: param.*, buffer.*, grad.*, momentum.*."""
    out: dict[str, torch.Tensor] = {}
    net = task.net
    opt = task._bench_opt
    for n, p in net.named_parameters():
        out[f"param.{n}"] = p.detach()
        if p.grad is not None:
            out[f"grad.{n}"] = p.grad.detach()
        mom = opt.state.get(p, {}).get("momentum_buffer") if opt is not None else None
        if mom is not None:
            out[f"momentum.{n}"] = mom
    for n, b in net.named_buffers():
        out[f"buffer.{n}"] = b
    return out


def tensor_diffs(x: dict[str, torch.Tensor], y: dict[str, torch.Tensor]) -> tuple[dict[str, float], dict[str, float]]:
    """Max abs difference and max abs difference / max abs reference of each name both hold."""
    diffs, rel = {}, {}
    for n, t in x.items():
        u = y.get(n)
        if u is None or u.shape != t.shape:
            continue
        d = (t.double() - u.double()).abs().max().item() if t.numel() else 0.0
        diffs[n] = d
        rel[n] = d / max(u.double().abs().max().item() if u.numel() else 0.0, 1e-12)
    return diffs, rel


def pointers(task: Any) -> dict[str, int]:
    return {n: t.data_ptr() for n, t in named_tensors(task).items() if not n.startswith("grad.")}


def resync(src: Any, dst: Any) -> None:
    """Copy ``src``'s parameters, buffers and momentum into ``dst``'s tensors, in place."""
    s, d = named_tensors(src), named_tensors(dst)
    with torch.no_grad():
        for n, t in d.items():
            if not n.startswith("grad.") and n in s:
                t.copy_(s[n])


def set_lr(task: Any, group: int, value: float, in_place: bool = False) -> None:
    """A new lr for a param group: a float assigned, as timm's schedule does (a captured step copies it into the
    tensor it reads), or with ``in_place`` written into the group's lr tensor (the ``--tensor-lr`` runs)."""
    grp = optimizer(task).param_groups[group]
    if in_place and isinstance(grp["lr"], torch.Tensor):
        grp["lr"].fill_(value)
    else:
        grp["lr"] = value


def first_divergence(records: list[dict[str, Any]], factor: float, floor: float) -> dict[str, dict[str, Any]]:
    """Per pair with a noise pair: the first step where a tensor's (or the loss's) difference exceeds
    ``factor x noise + floor``, with the exceeding names worst first (ratio = diff / (noise + floor))."""
    by = {(r["step"], r["pair"]): r for r in records}
    out: dict[str, dict[str, Any]] = {}
    for (step, pair), rec in sorted(by.items()):
        run, ref = pair.split("~")
        noise_pair = NOISE.get(ref)
        if noise_pair is None or (run, ref) == noise_pair or pair in out:
            continue
        noise = by.get((step, "~".join(noise_pair)))
        if noise is None:
            continue
        over = []
        cand = dict(rec["diffs"], loss=rec["loss_diff"])
        nd = dict(noise["diffs"], loss=noise["loss_diff"])
        for n, d in cand.items():
            bound = factor * nd.get(n, 0.0) + floor
            if d > bound:
                over.append({"name": n, "diff": d, "noise": nd.get(n, 0.0), "ratio": d / (nd.get(n, 0.0) + floor)})
        if over:
            over.sort(key=lambda o: -o["ratio"])
            out[pair] = {"step": step, "noise_pair": "~".join(noise_pair), "tensors": over[:20],
                         "count": len(over)}
    return out


def state_diff(diffs: dict[str, float]) -> tuple[float, str]:
    """The GPU test's measure: max over parameters and buffers (the state dict)."""
    state = {n: d for n, d in diffs.items() if n.startswith(("param.", "buffer."))}
    if not state:
        return 0.0, ""
    name = max(state, key=state.get)
    return state[name], name


class Runner:
    """Steps the runs and compares them: in lock-step (each step of every run, then the comparison) or one run after
    another (``--order sequential``, as tests/test_reid_cuda_graphs.py fits them: each run's compilations happen
    after the previous runs' ones, with dynamo's recompilation state as they left it; CPU snapshots per step)."""

    def __init__(self, a: argparse.Namespace, tasks: dict[str, Any], batches: list[dict[str, torch.Tensor]],
                 device: torch.device, log: Any) -> None:
        self.a, self.tasks, self.batches, self.device, self.log = a, tasks, batches, device, log
        self.pairs = [(r, ref) for r, ref in PAIRS if r in tasks and ref in tasks]
        self.records: list[dict[str, Any]] = []
        self.ptr0: dict[str, dict[str, int]] = {}

    def step(self, r: str, step: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """One training step of run ``r`` (after the lr change and the eval of that step): (stats, eval embedding)."""
        from torch._dynamo.utils import counters

        a, t, batch = self.a, self.tasks[r], self.batches[step]
        if step == a.lr_change_at:
            set_lr(t, 0, float(optimizer(t).param_groups[0]["lr"]) * 0.5, in_place=a.tensor_lr or RUNS[r][3])
        emb = None
        before = counters["frames"]["ok"]
        t0 = time.perf_counter()
        if step == a.eval_at:
            t.eval()
            with torch.inference_mode(), autocast_for(a, self.device, RUNS[r][2]):
                for n in dict.fromkeys((a.batch, a.eval_batch)):  # each shape: eager warm-up, capture, replay
                    for _ in range(3):
                        out = t._embed(batch["image"][:n], t._camids({k: v[:n] for k, v in batch.items()}))
                    emb = out.float().clone() if emb is None else emb
            t.train()
        with autocast_for(a, self.device, RUNS[r][2]):
            stats = t.bench_train_step(batch).float()
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        ptr = pointers(t)
        self.ptr0.setdefault(r, ptr)
        moved = sorted(n for n, p in ptr.items() if n in self.ptr0[r] and self.ptr0[r][n] != p)
        rec = {"kind": "run", "step": step, "run": r, "loss": float(stats[0]), "stats": [float(s) for s in stats],
               "lr": [float(g["lr"]) for g in optimizer(t).param_groups],
               "compiles": counters["frames"]["ok"] - before, "moved": moved, "graph_counts": t.cuda_graph_counts(),
               "seconds": round(time.perf_counter() - t0, 3)}
        self.log.write(json.dumps(rec) + "\n")
        if rec["compiles"] or moved:
            print(f"step {step:2d} {r}: {rec['compiles']} frames compiled, moved storage: {moved[:5]}", flush=True)
        return stats, emb

    def compare(self, step: int, state: dict[str, dict[str, torch.Tensor]], stats: dict[str, torch.Tensor],
                evals: dict[str, torch.Tensor | None]) -> None:
        a = self.a
        for r, ref in self.pairs:
            diffs, rel = tensor_diffs(state[r], state[ref])
            if evals.get(r) is not None and evals.get(ref) is not None:
                d, rr = tensor_diffs({"e": evals[r]}, {"e": evals[ref]})
                diffs["eval.embedding"], rel["eval.embedding"] = d["e"], rr["e"]
            sd, sd_name = state_diff(diffs)
            rec = {"kind": "pair", "step": step, "pair": f"{r}~{ref}",
                   "loss": [float(stats[r][0]), float(stats[ref][0])],
                   "loss_diff": abs(float(stats[r][0]) - float(stats[ref][0])),
                   "stats_diff": (stats[r].cpu() - stats[ref].cpu()).abs().max().item(), "state_diff": sd,
                   "state_diff_name": sd_name, "diffs": diffs, "rel": rel}
            self.records.append(rec)
            self.log.write(json.dumps(rec) + "\n")
            top = sorted(diffs.items(), key=lambda kv: -kv[1])[:a.top]
            print(f"step {step:2d} {r + '~' + ref:36s} loss {rec['loss'][0]:.6f} vs {rec['loss'][1]:.6f} "
                  f"(d {rec['loss_diff']:.2e}) state d {sd:.3e} [{sd_name}] top: "
                  + ", ".join(f"{n} {d:.2e} (rel {rel[n]:.1e})" for n, d in top), flush=True)
        self.log.flush()

    def lockstep(self) -> None:
        tasks = self.tasks
        for step in range(len(self.batches)):
            stats, evals = {}, {}
            for r in tasks:
                stats[r], evals[r] = self.step(r, step)
            self.compare(step, {r: named_tensors(t) for r, t in tasks.items()}, stats, evals)
            if self.a.resync and step + 1 < len(self.batches):
                src = next(iter(tasks.values()))
                for t in list(tasks.values())[1:]:
                    resync(src, t)

    def sequential(self) -> None:
        snaps: dict[str, list[tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor | None]]] = {}
        for r in self.tasks:
            print(f"# run {r}", flush=True)
            snaps[r] = []
            for step in range(len(self.batches)):
                stats, emb = self.step(r, step)
                state = {n: v.detach().to("cpu", copy=True) for n, v in named_tensors(self.tasks[r]).items()}
                snaps[r].append((state, stats.cpu(), None if emb is None else emb.cpu()))
        for step in range(len(self.batches)):
            self.compare(step, {r: s[step][0] for r, s in snaps.items()}, {r: s[step][1] for r, s in snaps.items()},
                         {r: s[step][2] for r, s in snaps.items()})


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    if a.resync and a.order == "sequential":
        raise SystemExit("--resync needs --order lockstep")
    with _global_settings(a):
        return _main(a)


@contextlib.contextmanager
def _global_settings(a: argparse.Namespace) -> Any:
    """cuDNN without benchmarking, and with ``--deterministic`` the deterministic switches; restored afterwards (the
    GPU test calls :func:`main` inside pytest)."""
    import torch._inductor.config as inductor_config

    saved = (torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic,
             torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled(),
             getattr(inductor_config, "deterministic", None))
    torch.backends.cudnn.benchmark = False
    if a.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.backends.cudnn.deterministic = True
        torch.use_deterministic_algorithms(True, warn_only=True)
        if hasattr(inductor_config, "deterministic"):  # no on-device benchmarking (recent torch)
            inductor_config.deterministic = True
        else:
            print("# this torch's inductor has no deterministic mode: kernel picks may still be timed", flush=True)
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = saved[0], saved[1]
        torch.use_deterministic_algorithms(saved[2], warn_only=saved[3])
        if saved[4] is not None:
            inductor_config.deterministic = saved[4]


def _main(a: argparse.Namespace) -> int:
    device = torch.device(a.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device (use --device cpu for the code path)")
    runs = select_runs(a.runs, a.device)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    tasks = build_tasks(a, runs, device)
    net0 = next(iter(tasks.values())).net
    batches = make_batches(a, int(net0.num_classes), 2 if a.tiny else 6, tuple(net0.img_size), device)
    for r, t in tasks.items():
        opt = optimizer(t)
        if (a.tensor_lr or RUNS[r][3]) and device.type == "cuda":  # CPU: a float (the graph path never runs there)
            for grp in opt.param_groups:
                grp["lr"] = torch.tensor(float(grp["lr"]), dtype=torch.float32, device=device)
    sdpa: contextlib.AbstractContextManager = contextlib.nullcontext()
    if a.deterministic:
        from torch.nn.attention import SDPBackend, sdpa_kernel

        sdpa = sdpa_kernel(SDPBackend.MATH)
    settings = dict(vars(a))
    settings.update(runs=runs, torch=torch.__version__,
                    gpu=torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
                    commit=git_commit()[0] or None)
    print("# reid_graph_drift " + json.dumps(settings), flush=True)
    with (out / "steps.jsonl").open("w") as log, sdpa:
        runner = Runner(a, tasks, batches, device, log)
        runner.lockstep() if a.order == "lockstep" else runner.sequential()
    records, pairs = runner.records, runner.pairs
    div = first_divergence(records, a.factor, a.floor)
    last = {rec["pair"]: {"state_diff": rec["state_diff"], "name": rec["state_diff_name"],
                          "loss_diff": rec["loss_diff"]} for rec in records if rec["step"] == a.steps - 1}
    summary = {"settings": settings, "first_divergence": div, "last_step": last,
               "graph_counts": {r: t.cuda_graph_counts() for r, t in tasks.items()}}
    (out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    print("\n# first divergence (diff > %g x noise + %g):" % (a.factor, a.floor))
    for r, ref in pairs:
        pair = f"{r}~{ref}"
        d = div.get(pair)
        if d is None:
            print(f"  {pair:36s} " + ("none" if ref in NOISE and (r, ref) != NOISE[ref] else "(noise pair)"))
        else:
            names = ", ".join(f"{o['name']} {o['diff']:.2e} vs noise {o['noise']:.2e}" for o in d["tensors"][:4])
            print(f"  {pair:36s} step {d['step']}: {d['count']} tensors, worst {names}")
    print("# last step state diff: " + ", ".join(f"{p} {v['state_diff']:.3e}" for p, v in last.items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
