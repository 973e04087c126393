"""Side-by-side driver for the official FusionReID code (github 924973292/FusionReID), for ``sharezoo bench``.

The upstream repository is never committed: bring it into the git-ignored ``.upstream/FusionReID`` with
``benchmarks/fetch_upstream.sh FusionReID`` (or point ``FUSIONREID_REPO`` at a checkout). This file only
drives it: it builds the official model, losses and optimiser from the official Market-1501 config
(R50 + ViT-B/16 stride 12, HTM depth 2) with random init (``PRETRAIN_CHOICE`` off), and times the official
training-step body (fp16 autocast + GradScaler, six summed losses, its per-parameter-group SGD) or its
fp16 inference forward, on the same synthetic batch shapes as ours.

Fairness note (issue 3): with random init the soft-margin triplet overflows on the ResNet features unless
the last BatchNorm of each bottleneck starts at zero, so that init is applied to both sides.
"""
from __future__ import annotations

import os
import sys
import types
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
NUM_CLASSES, NUM_CAMS, P, K = 751, 6, 8, 16


def _import_official():
    repo = Path(os.environ.get("FUSIONREID_REPO", ROOT / ".upstream" / "FusionReID"))
    if not (repo / "modeling" / "make_model.py").is_file():
        raise FileNotFoundError(f"official FusionReID checkout not found at {repo}; run benchmarks/fetch_upstream.sh")
    sys.path.insert(0, str(repo))

    def _absent(*_a, **_k):
        raise RuntimeError("backbone not shipped by the official repository")

    # make_model.py imports two backbone modules the repository does not contain; give them stand-ins
    for mod, names in {"modeling.backbones.ResTV2": ["restv2_tiny", "restv2_small", "restv2_base", "restv2_large"],
                       "modeling.backbones.edgeViT": ["edgevit_s"]}.items():
        stub = types.ModuleType(mod)
        for n in names:
            setattr(stub, n, _absent)
        sys.modules[mod] = stub
    try:
        import modeling.backbones.t2tvit  # noqa: F401  (imports timm paths that moved in timm 1.x)
    except Exception:  # noqa: BLE001
        stub = types.ModuleType("modeling.backbones.t2tvit")
        stub.t2t_vit_t_24 = stub.t2t_vit_t_14 = _absent
        sys.modules["modeling.backbones.t2tvit"] = stub
    from config import cfg as default_cfg
    from layers.make_loss import make_loss
    from modeling import make_model
    from modeling.backbones.resnet import Bottleneck
    from solver.make_optimizer import make_optimizer

    cfg = default_cfg.clone()
    cfg.merge_from_file(str(repo / "configs" / "Market1501" / "market_vitb12_res50_layer2.yml"))
    cfg.MODEL.PRETRAIN_CHOICE = "none"  # random init, as on our side (no ImageNet files on the machine)
    cfg.freeze()
    return cfg, make_model, make_loss, make_optimizer, Bottleneck


def make_step(batch_size: int, precision: str, device: torch.device, task=None, mode: str = "train"):
    """Return ``(step_fn, samples_per_step)`` running the official code on synthetic Market-1501 shapes."""
    cfg, make_model, make_loss, make_optimizer, Bottleneck = _import_official()
    model = make_model(cfg, num_class=NUM_CLASSES, camera_num=NUM_CAMS, view_num=1).to(device)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, Bottleneck):
                m.bn3.weight.zero_()
    g = torch.Generator().manual_seed(0)
    img = torch.randn(batch_size, 3, 256, 128, generator=g).to(device)
    pid = torch.arange(batch_size // K).repeat_interleave(K).to(device) if batch_size % K == 0 else \
        torch.randint(0, NUM_CLASSES, (batch_size,), generator=g).to(device)
    cam = torch.randint(0, NUM_CAMS, (batch_size,), generator=g).to(device)
    if mode == "infer":
        model.eval()

        @torch.no_grad()
        def infer() -> torch.Tensor:
            with torch.autocast("cuda", dtype=torch.float16, enabled=device.type == "cuda"):
                return model(img, cam_label=cam)

        return infer, batch_size
    loss_fn, center = make_loss(cfg, num_classes=NUM_CLASSES)
    optimizer, _ = make_optimizer(cfg, model, center)
    scaler = torch.amp.GradScaler("cuda")
    model.train()

    def step() -> None:  # the body of the official training loop (engine/processor.py), minus its logging
        optimizer.zero_grad()
        with torch.autocast("cuda", dtype=torch.float16):
            out = model(img, label=pid, cam_label=cam)
            loss = sum(loss_fn(out[i], out[i + 1], pid, cam) for i in range(0, 12, 2))
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()

    return step, batch_size
