"""The official NeuroPictor training step (github jingyanghuo/neuropictor), timed beside ours (issue 17).

    benchmarks/fetch_upstream.sh neuropictor                                # the code, into the ignored .upstream/
    python3 benchmarks/neuropictor_official.py --site /tmp/site_official    # GPU, paper size (neuropictor_h200.sh)
    python3 benchmarks/neuropictor_official.py --device cpu --tiny --site DIR   # CPU smoke test (reduced config)
    python3 benchmarks/neuropictor_official.py --count-only --site DIR          # paper-size parameter counts only

What runs is theirs, unchanged: ``cldm.cldm_fmri_surf.CLDM_for_FMRI`` built by their ``ldm.util.
instantiate_from_config`` from their ``models/finetune.yaml`` (the single-subject fine-tuning recipe: fMRI encoder +
semantic network + ControlNet trained, sem_loss_weight 0.1, frozen SD 2.1 UNet/VAE/OpenCLIP ViT-H/14, gradient
checkpointing on, batch 16), one step being their ``training_step`` (-> ``shared_step`` -> ``get_input`` (fMRI
encoder, VAE encode of the 512-px target, semantic network, OpenCLIP text target) -> ``p_losses``) under bf16
autocast (their ``precision: "bf16"``, which Lightning 1.5 applies as ``torch.autocast`` around ``training_step``),
``backward`` outside it, then the AdamW of their ``configure_optimizers`` (lr 1e-4, wd 0.01) and ``zero_grad()``,
as Lightning's loop does. Random init (no weights); the same synthetic shapes as ours: (B, 1, 256, 256) surfaces,
(B, 512, 512, 3) targets in [-1, 1], one COCO-like caption each. As under Lightning, the UNet's parameters keep
``requires_grad`` (their code never freezes them; they are only left out of the optimizer), so their backward also
computes UNet weight gradients, which accumulate in ``.grad`` (Lightning zeroes only the optimizer's parameters).

What their repository lacks or our image breaks, and what this harness puts in its place (nothing here changes the
maths of their step):

- ``pytorch_lightning.utilities.distributed.rank_zero_only`` (ldm/models/diffusion/ddpm.py line 20; gone in
  Lightning 2.x): a module injected into ``sys.modules`` that re-exports ``pytorch_lightning.utilities.rank_zero_only``.
- ``lpips`` (imported at the top of cldm/cldm_fmri_surf.py, used only by validation metrics): a stub module; the
  config's ``val_perceptual_metrics`` is set to false, so neither LPIPS nor the torchvision EfficientNet-B1 /
  Inception-V3 weights (downloads) are built.
- ``load_fmri_encoder`` (cldm/cldm_fmri_surf.py) loads ``./ckpt/fMRI2fMRI_UKB/fMRI_AutoEncoder.yaml`` and
  ``checkpoint_120000.pth`` from Hugging Face, absent here. It is replaced by a function that builds their
  ``Neural_fMRI2fMRI`` from their ``utils.utils.Config`` reading a RECONSTRUCTED yaml (written to a temporary folder)
  and deletes the decoder parts as theirs does, loading no weights. The reconstruction: patch 16 on the 256x256
  surface, 1 channel (-> 257 tokens x 1024, as the paper and the mappers' hard-coded 257/1024 require), encoder depth
  24 and 16 heads, decoder width 512 / depth 8 (deleted after construction anyway), drop_rate 0.0. Depth, heads and
  dropout are ASSUMPTIONS (the yaml is not retrievable); they are the ones our ``neuropictor_sd21`` assumes too.
- OpenCLIP ViT-H/14 weights (``pretrained='laion2b_s32b_b79k'``, a download): ``open_clip.create_model_and_transforms``
  is wrapped to pass ``pretrained=None`` (random init) and to build on the run's device. Their text code permutes to
  sequence-first (ldm/modules/encoders/modules.py ``encode_text_final``), which open_clip >= 2.24 (batch-first)
  breaks, so open_clip_torch 2.23.0 (their env.yaml pin) is carried, with omegaconf 2.3.0 and
  antlr4-python3-runtime 4.9.3, in ``.whl/official/`` and installed into its own ``--site`` folder (put first on
  ``sys.path``) beside the image's newer open_clip used by our side.
- timm: their fMRI encoder calls ``timm.models.vision_transformer.Block(..., drop=...)`` (fmrienc_src/
  transformer_layers.py ``fMRI_Autoencoder``), a keyword timm 0.9 renamed; their pin 0.6.12 does not import on
  Python >= 3.11 (a mutable dataclass default in timm/models/maxxvit.py), so timm 0.6.13 (same Block) is carried
  in ``.whl/official/`` too.
- Building on the GPU (a CPU init of ~2.6 G parameters is slow): their ``DDPM.register_schedule`` turns a torch
  ``linspace`` into numpy, which fails under a CUDA default device, so it runs under ``torch.device("cpu")`` and its
  buffers move with the model (same values).
- xformers (their env.yaml: 0.0.23; not in the GPU image, no wheel for its torch): ``--attention xformers-sdpa``
  (default) injects an ``xformers.ops.memory_efficient_attention`` that calls
  ``torch.nn.functional.scaled_dot_product_attention`` (exact attention, as xformers computes), so their code takes
  its xformers branch (MemoryEfficientCrossAttention, MemoryEfficientAttnBlock) as in their environment;
  ``--attention vanilla`` runs their no-xformers fallback (CrossAttention with fp32 ``einsum`` + softmax,
  ``ATTN_PRECISION=fp32``), which is what their code does on an image without xformers.

``--tiny`` (CPU smoke): their ``FMRIToControlModel()`` and ``FMRIToSemanticModel()`` are built with hard-coded
257 tokens x 1024, 320 channels and a 64x64 latent, so the reduced config keeps those and 512-px targets; it shrinks
the rest: surface 64 with patch 4 (257 tokens), encoder depth 1, UNet/ControlNet channel_mult [1, 1] with one res
block and attention at 32x32, a 32-channel VAE, a 2-layer width-1024 OpenCLIP text tower, batch 1, fp32. (bf16
on a CPU fails inside their code: the gradient checkpoint's recompute, ldm/modules/diffusionmodules/util.py
``CheckpointFunction.backward``, re-enters CUDA autocast only, so under CPU autocast it recomputes on bf16 inputs
without autocast. On a GPU it re-enters the bf16 autocast it saw, as in their training.)

Their config turns gradient checkpointing on (``use_checkpoint: True``: UNet and ControlNet blocks recompute their
forward in backward); ours has none. ``--no-checkpointing`` sets it false (same maths, more memory) for a look at
what that choice costs them; the default is their config.

One JSON line per run, with the fields of bench_neuropictor.py (command, commit, versions, step_ms_median,
samples_per_s, peak_mem_gib, params, trainable_params) and ``impl: official``, is appended to ``--out``
(default benchmarks/results/neuropictor.jsonl; --tiny: a temporary file). ``trainable_params`` counts the
parameters their ``configure_optimizers`` hands AdamW; ``updated_params`` those of them that receive a gradient
(their ControlNet keeps an unused image hint block and their encoder an unused ``pred`` head and mask token);
``grad_params`` every parameter with ``requires_grad`` (adds the UNet). At paper size (``--count-only``, meta
device): params 1,979.77 M, trainable 676.18 M = ControlNet 369.03 + fMRI encoder 304.94 + semantic network 2.21;
updated 672.73 M, the same as ours (``neuropictor_sd21``: 672.73 M of 1,976.59 M) once the unused hint block
(1.08 M), the encoder's unused ``pred`` head and mask token (2.10 M) and its frozen sin-cos position embedding
(0.26 M, which their optimizer lists anyway) are set aside; grad_params 1,541.82 M (the 865.91 M UNet included).
"""
from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import shlex
import sys
import tempfile
import time
import types
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch

UPSTREAM = "jingyanghuo/neuropictor"
UPSTREAM_COMMIT_CHECKED = "5e1584a"  # the snapshot this harness was written against
HASHED = ("cldm/cldm_fmri_surf.py", "ldm/models/diffusion/ddpm.py", "models/finetune.yaml",
          "fmrienc_src/transformer_layers.py", "ldm/modules/attention.py")
CAPTIONS = ("A man riding a wave on top of a surfboard.", "Two giraffes standing next to each other in a field.",
            "A plate of food with broccoli and rice.", "A red double decker bus driving down a street.")

# RECONSTRUCTION of the Hugging Face fMRI_AutoEncoder.yaml (not retrievable): only the keys their fMRI_Autoencoder
# reads. Patch 16 / 256x256 / width 1024 are fixed by the paper's 257x1024 tokens; depth, heads, dropout are assumed.
ENCODER_YAML = """\
# sharezoo reconstruction of fMRI_AutoEncoder.yaml for benchmarks/neuropictor_official.py (not the released file)
Data:
  patch_size: {patch}
  image_size: [{surface}, {surface}]
Model:
  embed_dim: 1024
  num_heads: 16
  encoder_depth: {depth}
  decoder_embed_dim: {dec_dim}
  decoder_depth: {dec_depth}
  drop_rate: 0.0
  in_chans: 1
"""
PAPER_ENCODER = dict(patch=16, surface=256, depth=24, dec_dim=512, dec_depth=8)
TINY_ENCODER = dict(patch=4, surface=64, depth=1, dec_dim=64, dec_depth=1)
TINY_TEXT_TOWER = {"embed_dim": 1024, "vision_cfg": {"image_size": 32, "layers": 1, "width": 64, "patch_size": 16},
                   "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 1024, "heads": 16, "layers": 2}}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--tiny", action="store_true", help="reduced config, batch 1, fp32 (CPU smoke test)")
    p.add_argument("--count-only", action="store_true", help="build on the meta device and print parameter counts")
    p.add_argument("--repo", default=os.environ.get("NEUROPICTOR_REPO", str(ROOT / ".upstream" / "neuropictor")),
                   help="the official checkout (benchmarks/fetch_upstream.sh neuropictor)")
    p.add_argument("--site", default=None, help="folder holding open_clip 2.23 / omegaconf (pip install --target of "
                   ".whl/official/*.whl); put first on sys.path")
    p.add_argument("--attention", default="xformers-sdpa", choices=["xformers-sdpa", "vanilla"],
                   help="their xformers branch on torch SDPA (their environment) or their no-xformers fallback")
    p.add_argument("--no-checkpointing", action="store_true", help="use_checkpoint false in their UNet/ControlNet "
                   "config (theirs: true; ours has no gradient checkpointing); same maths, more memory")
    p.add_argument("--batch", type=int, default=None, help="training batch (default 16, their config's; tiny: 1)")
    p.add_argument("--precision", default=None, choices=["bf16-mixed", "32-true"],
                   help="default bf16-mixed on a GPU (their config's bf16), 32-true on a CPU")
    p.add_argument("--steps", type=int, default=None, help="timed steps (default 20; tiny: 1)")
    p.add_argument("--warmup", type=int, default=None, help="warm-up steps (default 3; tiny: 1)")
    p.add_argument("--out", default=None, help="JSON-lines file (default benchmarks/results/neuropictor.jsonl; "
                   "tiny: a temporary file)")
    a = p.parse_args(argv)
    a.batch = a.batch or (1 if a.tiny else 16)
    a.steps = a.steps or (1 if a.tiny else 20)
    a.warmup = a.warmup if a.warmup is not None else (1 if a.tiny else 3)
    from tasks.bench import results_path

    a.out = a.out or results_path("neuropictor", a.tiny, "neuropictor_official")
    return a


# ------------------------------------------------------------------------------------------------ shims and import
def _shim_modules(attention: str) -> None:
    """Stand-ins for modules the official code imports but the step does not use, or that moved (see the docstring)."""
    from pytorch_lightning.utilities import rank_zero_only

    dist = types.ModuleType("pytorch_lightning.utilities.distributed")
    dist.rank_zero_only = rank_zero_only
    sys.modules["pytorch_lightning.utilities.distributed"] = dist

    def _no_lpips(*_a: Any, **_k: Any) -> None:
        raise RuntimeError("lpips is stubbed: validation metrics are off in this harness")

    lpips = types.ModuleType("lpips")
    lpips.LPIPS = _no_lpips
    sys.modules["lpips"] = lpips
    if attention == "vanilla":
        sys.modules["xformers"] = None  # their `import xformers` fails -> XFORMERS_IS_AVAILBLE = False
        return
    import torch.nn.functional as F

    def memory_efficient_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, attn_bias: Any = None,
                                   op: Any = None) -> torch.Tensor:
        # xformers' [B, M, K] layout (their callers fold heads into B); exact softmax attention, scale 1/sqrt(K)
        if attn_bias is not None:
            raise NotImplementedError("their code passes attn_bias=None")
        return F.scaled_dot_product_attention(q[:, None], k[:, None], v[:, None])[:, 0]

    xformers, ops = types.ModuleType("xformers"), types.ModuleType("xformers.ops")
    ops.memory_efficient_attention = memory_efficient_attention
    xformers.ops = ops
    sys.modules["xformers"], sys.modules["xformers.ops"] = xformers, ops


def _import_official(a: argparse.Namespace, build_device: torch.device) -> types.SimpleNamespace:
    repo = Path(a.repo)
    if not (repo / "cldm" / "cldm_fmri_surf.py").is_file():
        raise FileNotFoundError(f"official NeuroPictor checkout not found at {repo}; run "
                                "benchmarks/fetch_upstream.sh neuropictor")
    sys.path.insert(0, str(repo.resolve()))
    _shim_modules(a.attention)
    import open_clip
    from open_clip.version import __version__ as open_clip_version

    if not open_clip_version.startswith("2.23"):
        print(f"note: open_clip {open_clip_version}, not their 2.23 (their sequence-first text code may fail); "
              "install .whl/official/*.whl into --site", file=sys.stderr)
    create = open_clip.create_model_and_transforms

    def create_random(arch: str, *args: Any, **kw: Any) -> Any:  # no pretrained download; build where we run
        kw.update(pretrained=None, device=build_device)
        return create(arch, *args, **kw)

    open_clip.create_model_and_transforms = create_random
    import share  # noqa: F401  (their train.py's first import: quiets transformers, sliced attention off)
    from cldm import cldm_fmri_surf
    from ldm.models.diffusion import ddpm

    register_schedule = ddpm.DDPM.register_schedule

    def register_schedule_on_host(self: Any, *args: Any, **kw: Any) -> None:  # numpy maths: host tensors, moved later
        with torch.device("cpu"):
            register_schedule(self, *args, **kw)

    ddpm.DDPM.register_schedule = register_schedule_on_host
    from fmrienc_src.transformer_models import Neural_fMRI2fMRI
    from ldm.util import instantiate_from_config
    from omegaconf import OmegaConf
    from utils.utils import Config

    return types.SimpleNamespace(repo=repo, cldm=cldm_fmri_surf, Neural_fMRI2fMRI=Neural_fMRI2fMRI, Config=Config,
                                 instantiate_from_config=instantiate_from_config, OmegaConf=OmegaConf,
                                 open_clip=open_clip, open_clip_version=open_clip_version)


def _fmri_encoder_loader(up: types.SimpleNamespace, yaml_path: Path):
    """Their load_fmri_encoder, minus the checkpoint: build from the (reconstructed) yaml, drop the decoder."""

    def load_fmri_encoder() -> torch.nn.Module:
        enc = up.Neural_fMRI2fMRI(up.Config(str(yaml_path)))
        for name in ("decoder_pos_embed", "decoder_blocks", "decoder_pred", "decoder_embed", "decoder_norm"):
            delattr(enc.transformer, name)
        return enc

    return load_fmri_encoder


def _model_config(up: types.SimpleNamespace, a: argparse.Namespace, tmp: Path) -> Any:
    cfg = up.OmegaConf.load(up.repo / "models" / "finetune.yaml")
    m = cfg.model.params
    m.val_perceptual_metrics = False  # validation-only LPIPS / EfficientNet / Inception (downloads)
    if a.device == "cpu" or a.count_only:
        m.cond_stage_config.params.device = "cpu"  # their FrozenOpenCLIPEmbedder moves tokens to 'cuda' by default
    if a.no_checkpointing:
        m.unet_config.params.use_checkpoint = m.control_stage_config.params.use_checkpoint = False
    if a.tiny:
        (tmp / "sharezoo-smoke-text.json").write_text(json.dumps(TINY_TEXT_TOWER))
        up.open_clip.add_model_config(tmp / "sharezoo-smoke-text.json")
        m.cond_stage_config.params.arch = "sharezoo-smoke-text"
        for net in (m.unet_config.params, m.control_stage_config.params):
            net.channel_mult, net.num_res_blocks, net.attention_resolutions = [1, 1], 1, [2]
        dd = m.first_stage_config.params.ddconfig
        dd.ch, dd.ch_mult, dd.num_res_blocks = 32, [1, 1, 1, 1], 1
    return cfg


def build_official(a: argparse.Namespace, device: torch.device) -> tuple[Any, types.SimpleNamespace]:
    """Their CLDM_for_FMRI from their finetune.yaml (reduced under --tiny), random init, on ``device``."""
    up = _import_official(a, device)
    tmp = Path(tempfile.mkdtemp(prefix="neuropictor_official_"))
    enc = TINY_ENCODER if a.tiny else PAPER_ENCODER
    yaml_path = tmp / "fMRI_AutoEncoder.yaml"
    yaml_path.write_text(ENCODER_YAML.format(**enc))
    up.cldm.load_fmri_encoder = _fmri_encoder_loader(up, yaml_path)
    cfg = _model_config(up, a, tmp)
    ctx = torch.device(device) if device.type != "cpu" else contextlib.nullcontext()
    with ctx:  # build on the GPU (their noise schedule on the host): a CPU init of ~2.6 G parameters is slow
        model = up.instantiate_from_config(cfg.model)
    if device.type != "meta":
        model = model.to(device)
    # what their train.py sets after create_model (train section of the same yaml)
    model.learning_rate, model.weight_decay = cfg.train.learning_rate, cfg.train.weight_decay
    model.sd_locked, model.only_mid_control = True, False
    model.mask, model.mask_rate = cfg.train.mask_flag, cfg.train.mask_rate
    up.encoder = enc
    return model, up


def synthetic_batch(batch: int, surface: int, device: torch.device) -> dict[str, Any]:
    """Their NSDImageDataset's item, collated: fmri (B,1,S,S), gt_image (B,512,512,3) in [-1,1], txt (captions)."""
    g = torch.Generator().manual_seed(0)
    return {"fmri": torch.randn(batch, 1, surface, surface, generator=g).to(device),
            "gt_image": (torch.rand(batch, 512, 512, 3, generator=g) * 2 - 1).to(device),
            "txt": [CAPTIONS[i % len(CAPTIONS)] for i in range(batch)]}


# ------------------------------------------------------------------------------------------------------ measuring
def _count(params: Any) -> int:
    return sum(p.numel() for p in params)


def param_counts(model: Any, opt: torch.optim.Optimizer) -> dict[str, int]:
    in_opt = [p for g in opt.param_groups for p in g["params"]]
    return {"params": _count(model.parameters()), "trainable_params": _count(in_opt),
            "grad_params": _count(p for p in model.parameters() if p.requires_grad),
            "controlnet_params": _count(model.control_model.parameters()),
            "fmri_encoder_params": _count(model.fmri_encoder.parameters()),
            "semantic_params": _count(model.cond_stage.parameters()),
            "unet_params": _count(model.model.parameters())}


def train_step(model: Any, opt: torch.optim.Optimizer, batch: dict[str, Any], device: torch.device,
               precision: str):
    """Lightning 1.5's automatic-optimisation step around their training_step (bf16: autocast, no scaler)."""
    from tasks.bench import autocast

    losses: list[torch.Tensor] = []

    def step() -> None:
        with autocast(device, precision):
            loss = model.training_step(batch, 0)
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses[:] = [loss.detach()]

    step.losses = losses
    return step


def file_hashes(repo: Path) -> str:
    h = hashlib.sha256()
    for rel in HASHED:
        h.update((repo / rel).read_bytes())
    return h.hexdigest()[:12]


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    a = parse_args(argv)
    if a.site:  # their pins (open_clip 2.23, timm 0.6, omegaconf) before anything imports the image's newer ones
        sys.path.insert(0, str(Path(a.site).resolve()))
    from tasks.bench import default_precision, provenance, time_steps

    device = torch.device("meta" if a.count_only else a.device)
    a.precision = a.precision or default_precision(torch.device(a.device))
    if device.type == "cuda":  # the same backend flags as bench_neuropictor.py
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
    prov = provenance(argv)
    prov["command"] = "python3 benchmarks/neuropictor_official.py " + " ".join(shlex.quote(x) for x in argv)
    t0 = time.perf_counter()
    torch.manual_seed(0)
    model, up = build_official(a, device)
    build_s = time.perf_counter() - t0
    model.train()
    model.log = model.log_dict = lambda *args, **kwargs: None  # no Trainer attached (ours is stubbed the same way)
    opt = model.configure_optimizers()
    counts = param_counts(model, opt)
    if a.count_only:
        print(json.dumps({"model": "official finetune.yaml", **counts}))
        return 0
    batch = synthetic_batch(a.batch, up.encoder["surface"], device)
    step = train_step(model, opt, batch, device, a.precision)
    r = time_steps(step, a.steps, a.warmup, device)
    in_opt = [p for g in opt.param_groups for p in g["params"]]
    counts["updated_params"] = _count(p for p in in_opt if opt.state.get(p))  # AdamW keeps state once it had a grad
    import timm

    rec = {**prov, "impl": "official", "upstream": UPSTREAM, "upstream_files_sha256": file_hashes(up.repo),
           "upstream_commit_checked": UPSTREAM_COMMIT_CHECKED, "open_clip": up.open_clip_version,
           "timm": timm.__version__, "last_loss": float(step.losses[0]),
           "model": "official:models/finetune.yaml" + (" (tiny)" if a.tiny else ""), "mode": "eager",
           "precision": a.precision, "device": str(device), "attention": a.attention,
           "gradient_checkpointing": not a.no_checkpointing,
           "allow_tf32": torch.backends.cuda.matmul.allow_tf32, "bench": "train",
           "batch": a.batch, "image_size": 512, "fmri_encoder": "reconstructed yaml: " + json.dumps(up.encoder),
           **counts, **r, "build_s": build_s, "samples_per_s": a.batch / (r["step_ms_median"] / 1e3)}
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    with open(a.out, "a") as f:
        f.write(json.dumps(rec) + "\n")
    print(f"official {rec['model']} train eager ({a.attention}) b={a.batch} {r['step_ms_median']:.1f} ms "
          f"{rec['samples_per_s']:.2f} samples/s (first call {r['first_call_s']:.1f} s, peak "
          f"{r['peak_mem_gib'] or 0:.1f} GiB, build {build_s:.0f} s); "
          f"trainable {counts['trainable_params'] / 1e6:.2f} M (updated {counts['updated_params'] / 1e6:.2f} M) "
          f"of {counts['params'] / 1e6:.2f} M; appended to {a.out}",
          flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
