"""``build_model``: what every registered entrypoint calls to construct its module and load weights."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from ._pretrained import PretrainedCfg, load_into, load_state_dict_file, resolve_pretrained_file
from ._registry import get_pretrained_cfg, get_pretrained_tags, model_module

_PRETRAINED_KWARGS = ("cache_dir", "checkpoint_filter_fn")


def build_model(
    cls: type[torch.nn.Module],
    name: str,
    pretrained: bool | str | os.PathLike = False,
    defaults: dict[str, Any] | None = None,
    **kwargs: Any,
) -> torch.nn.Module:
    """Construct ``cls(**{**defaults, **kwargs})`` and load the requested weight.

    Args:
        cls: the model class.
        name: registered architecture name.
        pretrained: False; True (the default tag); a tag from the manifest; or a local file/folder path.
        defaults: the variant's constructor arguments.
        **kwargs: overrides; ``cache_dir`` is consumed here.
    """
    cache_dir = kwargs.pop("cache_dir", None)
    cfg: PretrainedCfg | None = None
    tag = None
    if pretrained is True or (isinstance(pretrained, str) and pretrained in get_pretrained_tags(name)):
        cfg = get_pretrained_cfg(name if pretrained is True else f"{name}.{pretrained}")
        tag = pretrained if isinstance(pretrained, str) else get_pretrained_tags(name)[0]
        # constructor kwargs the weight needs, unless the caller overrides them
        kwargs = {**cfg.model_kwargs, **kwargs}
    model_kwargs = {**(defaults or {}), **kwargs}
    model = cls(**model_kwargs)
    model.model_name = name  # type: ignore[assignment]
    model.model_kwargs = kwargs  # type: ignore[assignment]  # overrides only: the variant supplies the rest
    model.pretrained_cfg = cfg.to_dict() if cfg else None  # type: ignore[assignment]
    if pretrained is False or pretrained is None:
        return model
    if cfg is not None:
        path = resolve_pretrained_file(f"{name}.{tag}", cfg, cache_dir)
        load_into(model, load_state_dict_file(path), f"{name}.{tag} ({path})", cfg.classifier)
        return model
    path = Path(pretrained)  # type: ignore[arg-type]
    if path.is_dir():
        path = path / "model.safetensors"
    if not path.is_file():
        raise ValueError(
            f"pretrained={pretrained!r} for {name} is neither a known tag ({get_pretrained_tags(name) or 'none'}) "
            f"nor an existing file or folder"
        )
    load_checkpoint(model, path)
    return model


def load_checkpoint(model: torch.nn.Module, path: str | os.PathLike, strict: bool = True) -> None:
    """Load a local checkpoint into ``model``: our safetensors, a Lightning ``.ckpt`` or an upstream ``.pth``.

    A family module may read the file itself with ``read_checkpoint(path, model)`` (PPGFlowECG: a stage-2 task
    checkpoint's EMA flow, which the generic ``net.`` selection below would drop). Upstream keys go through the
    family module's ``checkpoint_filter_fn(state_dict, model)`` when it has one.
    """
    import importlib

    name = getattr(model, "model_name", None)
    mod = importlib.import_module(model_module(name)) if name else None
    reader = getattr(mod, "read_checkpoint", None)
    sd = reader(path, model) if reader is not None else load_state_dict_file(path)
    if any(k.startswith("net.") for k in sd) and not any(k.startswith("net.") for k in model.state_dict()):
        sd = {k[4:]: v for k, v in sd.items() if k.startswith("net.")}  # a sharezoo Lightning task checkpoint
    if mod is not None:
        fn = getattr(mod, "checkpoint_filter_fn", None)
        if fn is not None:
            sd = fn(sd, model)
    cls = tuple((getattr(model, "pretrained_cfg", None) or {}).get("classifier", ()))
    load_into(model, sd, str(path), cls, strict=strict)
