"""Preprocessing bound to the weights: ``resolve_data_config`` (as timm's), read by the datamodules' defaults.

Sources, first found wins: the weight's ``PretrainedCfg.preprocessing`` (``arch.tag``, or the arch's default tag), a
model's ``pretrained_cfg`` attribute (set by ``create_model`` / ``local-dir:``), the architecture's default data
config (:func:`register_data_config`, for architectures without released weights); explicit overrides win over all.
Keys are the manifest's: image ``input_size`` ((C, H, W) or (H, W)), ``mean``, ``std``, ``interpolation``; signal
``fs``, ``leads``, ``band``, ``window_s``, ...; ``image_size`` (H, W) is added whenever ``input_size`` is known.
"""
from __future__ import annotations

from typing import Any

from torch import nn

__all__ = ["register_data_config", "resolve_data_config"]

_default_data_configs: dict[str, dict[str, Any]] = {}


def register_data_config(arch: str, **preprocessing: Any) -> None:
    """The default preprocessing of architecture ``arch`` when no weight says otherwise."""
    _default_data_configs[arch] = dict(preprocessing)


def _from_name(name: str) -> dict[str, Any]:
    from ._registry import _pretrained_cfgs, model_entrypoint, split_model_name_tag

    arch, tag = split_model_name_tag(name)
    model_entrypoint(arch)  # an unknown name raises, naming close matches
    tags = _pretrained_cfgs.get(arch, {})
    if tag:
        from ._registry import get_pretrained_cfg

        return dict(get_pretrained_cfg(name).preprocessing)
    if tags:
        pre = next(iter(tags.values())).preprocessing
        if pre:
            return dict(pre)
    return dict(_default_data_configs.get(arch, {}))


def resolve_data_config(model_or_name: str | nn.Module | None = None, **overrides: Any) -> dict[str, Any]:
    """The preprocessing a model (or ``arch[.tag]`` name) expects, with ``overrides`` applied.

    Args:
        model_or_name: a registered name (``arch`` or ``arch.tag``), a model built by ``create_model``, or None (only
            the overrides).
        **overrides: keys that win over the resolved ones (None values are ignored).

    Returns:
        A new dict, e.g. ``{'input_size': (3, 256, 128), 'image_size': (256, 128), 'mean': ..., 'std': ...,
        'interpolation': 'bicubic'}``; empty when nothing is known.
    """
    if model_or_name is None:
        cfg: dict[str, Any] = {}
    elif isinstance(model_or_name, str):
        cfg = _from_name(model_or_name)
    else:
        pc = getattr(model_or_name, "pretrained_cfg", None) or {}
        cfg = dict(pc.get("preprocessing") or {}) if isinstance(pc, dict) else dict(pc.preprocessing)
    given = {k: v for k, v in overrides.items() if v is not None}
    cfg.update(given)
    size = cfg.get("input_size")
    if size is not None and "image_size" not in given:
        cfg["image_size"] = tuple(int(s) for s in (size[-2:] if len(size) >= 2 else (size[0], size[0])))
    return cfg
