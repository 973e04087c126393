"""Model cards: architecture, parameter count, paper, licence, weights and every known deviation.

Each family module defines ``MODEL_CARD = {'paper': ..., 'url': ..., 'code': ..., 'license': ...,
'deviations': [...], 'reported_params_m': {arch: float}}``; the count is measured here on the meta device
(no memory, no weights).
"""
from __future__ import annotations

import importlib
from typing import Any

import torch

from ._registry import _pretrained_cfgs, model_entrypoint, model_module, split_model_name_tag


def count_params(name: str, **kwargs: Any) -> int:
    """Parameter count of ``name`` built on the meta device (nothing is allocated)."""
    with torch.device("meta"):
        model = model_entrypoint(name)(pretrained=False, **kwargs)
    return sum(p.numel() for p in model.parameters())


def model_card_dict(name: str) -> dict[str, Any]:
    arch, _ = split_model_name_tag(name)
    entry = model_entrypoint(arch)
    card = dict(getattr(importlib.import_module(model_module(arch)), "MODEL_CARD", {}))
    params = count_params(arch)
    reported = card.pop("reported_params_m", {}).get(arch)
    return {
        "name": arch,
        "summary": (entry.__doc__ or "").strip(),
        "params": params,
        "reported_params_m": reported,
        "weights": {t: c.to_dict() for t, c in _pretrained_cfgs.get(arch, {}).items()},
        **card,
    }


def model_card(name: str) -> str:
    """A human-readable model card (what ``sharezoo info NAME`` prints)."""
    c = model_card_dict(name)
    lines = [f"# {c['name']}", "", c["summary"], ""]
    p = f"{c['params'] / 1e6:.2f}M"
    if c["reported_params_m"]:
        p += f" (paper reports {c['reported_params_m']}M; ours/paper = {c['params'] / 1e6 / c['reported_params_m']:.3f})"
    lines.append(f"parameters: {p}")
    for key in ("paper", "url", "code", "license"):
        if c.get(key):
            lines.append(f"{key}: {c[key]}")
    lines += ["", "weights:"]
    if not c["weights"]:
        lines.append("  none published for this architecture (random init; train it with `sharezoo fit`)")
    for tag, w in c["weights"].items():
        lines.append(f"  {c['name']}.{tag}: {w['hf_hub_id'] or w['url']} sha256={w['sha256'][:12]}… "
                     f"license={w['license']}")
        if w["preprocessing"]:
            lines.append(f"    preprocessing: {w['preprocessing']}")
        if w["metrics"]:
            lines.append(f"    metrics: {w['metrics']}")
    devs = c.get("deviations") or []
    lines += ["", "deviations from the paper:" if devs else "deviations from the paper: none known"]
    lines += [f"  - {d}" for d in devs]
    return "\n".join(lines)
