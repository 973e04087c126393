"""Model registry: ``@register_model`` entrypoints, name listing and pretrained-config lookup.

Names are lowercase snake ``family_backbone_variant``; a weight is addressed as ``name.tag``.
"""
from __future__ import annotations

import difflib
import fnmatch
import sys
from collections.abc import Callable
from typing import Any

from ._pretrained import PretrainedCfg

_model_entrypoints: dict[str, Callable[..., Any]] = {}
_model_to_module: dict[str, str] = {}
_pretrained_cfgs: dict[str, dict[str, PretrainedCfg]] = {}  # arch -> {tag: cfg}; first tag is the default


def split_model_name_tag(name: str) -> tuple[str, str]:
    """``'arch.tag'`` -> ``('arch', 'tag')``; ``'arch'`` -> ``('arch', '')``."""
    arch, _, tag = name.partition(".")
    return arch, tag


def register_model(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Decorator registering a model entrypoint ``fn(pretrained=False, **kwargs) -> nn.Module`` under its name."""
    name = fn.__name__
    if name in _model_entrypoints and _model_to_module[name] != fn.__module__:
        raise ValueError(f"model {name!r} is already registered by {_model_to_module[name]}")
    _model_entrypoints[name] = fn
    _model_to_module[name] = fn.__module__
    mod = sys.modules.get(fn.__module__)
    if mod is not None:
        all_ = getattr(mod, "__all__", None)
        if isinstance(all_, list) and name not in all_:
            all_.append(name)
    return fn


def register_pretrained_cfgs(cfgs: dict[str, PretrainedCfg]) -> None:
    """Register weight manifest entries keyed ``'arch.tag'`` (the first tag of an arch is its default)."""
    for key, cfg in cfgs.items():
        arch, tag = split_model_name_tag(key)
        if not tag:
            raise ValueError(f"pretrained cfg key {key!r} must be 'arch.tag'")
        cfg.validate(key)
        _pretrained_cfgs.setdefault(arch, {})[tag] = cfg


def is_model(name: str) -> bool:
    return split_model_name_tag(name)[0] in _model_entrypoints


def model_entrypoint(name: str) -> Callable[..., Any]:
    arch = split_model_name_tag(name)[0]
    if arch not in _model_entrypoints:
        close = difflib.get_close_matches(arch, list(_model_entrypoints), n=5, cutoff=0.5)
        hint = f" Did you mean: {', '.join(close)}?" if close else ""
        raise ValueError(f"Unknown model {arch!r}.{hint} `sharezoo list-models` lists all {len(_model_entrypoints)}.")
    return _model_entrypoints[arch]


def model_module(name: str) -> str:
    """The module (family) that registers ``name``: ``zoo.fusionreid`` for ``fusionreid_tiny``."""
    model_entrypoint(name)
    return _model_to_module[split_model_name_tag(name)[0]]


def list_models(pattern: str = "*", pretrained: bool = False) -> list[str]:
    """Registered model names matching a shell-style ``pattern``.

    Args:
        pattern: fnmatch pattern, e.g. ``'fusionreid*'``.
        pretrained: list ``arch.tag`` for every weight in the manifest instead of architectures.
    """
    if pretrained:
        names = [f"{a}.{t}" for a, tags in _pretrained_cfgs.items() for t in tags]
    else:
        names = list(_model_entrypoints)
    return sorted(n for n in names if fnmatch.fnmatch(n, pattern))


def list_pretrained(pattern: str = "*") -> list[str]:
    """Every ``arch.tag`` with a weight in the manifest."""
    return list_models(pattern, pretrained=True)


def get_pretrained_cfg(name: str) -> PretrainedCfg:
    """The manifest entry for ``arch.tag`` (or the arch's default tag). Raises if there is none."""
    arch, tag = split_model_name_tag(name)
    model_entrypoint(arch)
    tags = _pretrained_cfgs.get(arch, {})
    if not tags:
        raise ValueError(f"model {arch!r} has no pretrained weights in the manifest (random init only).")
    if not tag:
        tag = next(iter(tags))
    if tag not in tags:
        raise ValueError(f"model {arch!r} has no weight tagged {tag!r}; available: {', '.join(tags)}")
    return tags[tag]


def get_pretrained_tags(arch: str) -> list[str]:
    return list(_pretrained_cfgs.get(split_model_name_tag(arch)[0], {}))
