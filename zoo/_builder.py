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


#: where a sharezoo task (``tasks.ZooTask``) keeps its network: ``net.<model key>`` in a Lightning checkpoint
TASK_PREFIX = "net."


def strip_task_prefix(state_dict: dict[str, Any], model: torch.nn.Module | None = None) -> dict[str, Any]:
    """The model's weights in a sharezoo task state dict: its ``net.*`` keys without the prefix.

    A state dict without ``net.*`` keys is returned unchanged, and so is any state dict when ``model`` (given) has
    ``net.*`` keys of its own (then the prefix belongs to the model).
    """
    if not any(k.startswith(TASK_PREFIX) for k in state_dict):
        return state_dict
    if model is not None and any(k.startswith(TASK_PREFIX) for k in model.state_dict()):
        return state_dict
    return {k[len(TASK_PREFIX):]: v for k, v in state_dict.items() if k.startswith(TASK_PREFIX)}


def load_checkpoint(
    model: torch.nn.Module, path: str | os.PathLike, strict: bool = True, exclude: tuple[str, ...] = (),
) -> None:
    """Load a local checkpoint into ``model``: our safetensors (file or folder), a Lightning ``.ckpt`` or an upstream
    ``.pth``.

    A family module may read the file itself with ``read_checkpoint(path, model)`` (PPGFlowECG: a stage-2 task
    checkpoint's EMA flow, which the generic ``net.`` selection below would drop; Dens3R: an upstream training
    checkpoint converted with its ``args``). Upstream keys go through the family module's
    ``checkpoint_filter_fn(state_dict, model)`` when it has one.

    Args:
        model: the module to load into.
        path: the weight file, or a folder holding ``model.safetensors``.
        strict: every model key must be in the file (other than ``exclude``'s) and no file key unknown to the model.
        exclude: key prefixes (model keys) that are neither taken from the file nor required in it: e.g. a
            stage-2 module that is trained from scratch on top of stage-1 weights.
    """
    import importlib

    path = Path(path)
    if path.is_dir():
        path = path / "model.safetensors"
    name = getattr(model, "model_name", None)
    mod = importlib.import_module(model_module(name)) if name else None
    reader = getattr(mod, "read_checkpoint", None)
    sd = reader(path, model) if reader is not None else load_state_dict_file(path)
    sd = strip_task_prefix(sd, model)  # a sharezoo Lightning task checkpoint
    if mod is not None:
        fn = getattr(mod, "checkpoint_filter_fn", None)
        if fn is not None:
            sd = fn(sd, model)
    cls = tuple((getattr(model, "pretrained_cfg", None) or {}).get("classifier", ()))
    if exclude:  # the model's own tensors stand in for the excluded keys: loading them changes nothing
        own = {k: v for k, v in model.state_dict().items() if k.startswith(exclude)}
        sd = {k: v for k, v in sd.items() if not k.startswith(exclude)} | own
    load_into(model, sd, str(path), cls, strict=strict)
