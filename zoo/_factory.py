"""``create_model``: build any registered model by name, ``name.tag``, ``hf-hub:org/repo`` or ``local-dir:path``."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

from ._builder import load_checkpoint
from ._pretrained import PretrainedWeightsError, is_offline, load_into, load_state_dict_file, sha256_file, verify_sha256
from ._registry import model_entrypoint, split_model_name_tag

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"


def create_model(
    model_name: str,
    pretrained: bool | str | os.PathLike = False,
    checkpoint_path: str | os.PathLike | None = None,
    cache_dir: str | os.PathLike | None = None,
    **kwargs: Any,
) -> torch.nn.Module:
    """Create a model.

    Args:
        model_name: ``arch``, ``arch.tag`` (implies ``pretrained=tag``), ``hf-hub:org/repo`` or
            ``local-dir:path`` (a folder written by :func:`save_pretrained`).
        pretrained: False, True (the default weight), a tag, or a local file/folder path.
        checkpoint_path: local checkpoint loaded after construction (safetensors, Lightning ``.ckpt`` or the
            paper's upstream ``.pth``, converted by the family's key remap).
        cache_dir: weight cache (default ``$SHAREZOO_CACHE``, then ``~/.cache/sharezoo``).
        **kwargs: constructor overrides (``num_classes=...``).
    """
    if model_name.startswith("local-dir:"):
        return _from_folder(Path(model_name[len("local-dir:"):]), **kwargs)
    if model_name.startswith("hf-hub:"):
        return _from_folder(_hub_snapshot(model_name[len("hf-hub:"):], cache_dir), **kwargs)
    arch, tag = split_model_name_tag(model_name)
    if tag:
        if pretrained not in (False, True, tag):
            raise ValueError(f"{model_name!r} names tag {tag!r} but pretrained={pretrained!r}")
        pretrained = tag
    entry = model_entrypoint(arch)
    if cache_dir is not None:
        kwargs["cache_dir"] = cache_dir
    model = entry(pretrained=pretrained, **kwargs)
    if checkpoint_path is not None:
        load_checkpoint(model, checkpoint_path)
    return model


def save_pretrained(model: torch.nn.Module, folder: str | os.PathLike) -> Path:
    """Write ``model.safetensors`` + ``config.json`` that ``create_model('local-dir:<folder>')`` loads back.

    Tied weights (one tensor under several keys, e.g. tied input/output embeddings) are stored once by
    ``safetensors.torch.save_model``, which records the dropped keys in the file's metadata; loading puts them back
    and the reloaded model's weights stay tied (:func:`zoo._pretrained.load_into`).
    """
    from safetensors.torch import save_model

    name = getattr(model, "model_name", None)
    if name is None:
        raise ValueError("save_pretrained needs a model built by zoo.create_model (it has no model_name)")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    save_model(model, str(folder / WEIGHTS_NAME))
    cfg = {
        "architecture": name,
        "model_kwargs": getattr(model, "model_kwargs", {}),
        "pretrained_cfg": getattr(model, "pretrained_cfg", None),
        "sha256": sha256_file(folder / WEIGHTS_NAME),  # verified when the folder is loaded
        "format": "sharezoo/1",
    }
    (folder / CONFIG_NAME).write_text(json.dumps(cfg, indent=2, default=_jsonable))
    return folder


def _jsonable(o: Any) -> Any:
    if isinstance(o, (tuple, set)):
        return list(o)
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"save_pretrained: model kwarg of type {type(o).__name__} is not JSON-serialisable")


def _from_folder(folder: Path, **kwargs: Any) -> torch.nn.Module:
    cfg_path, weights = folder / CONFIG_NAME, folder / WEIGHTS_NAME
    for p in (cfg_path, weights):
        if not p.is_file():
            raise PretrainedWeightsError(f"{folder} is not a sharezoo model folder: {p.name} is missing")
    try:
        cfg = json.loads(cfg_path.read_text())
        arch = cfg["architecture"]
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise PretrainedWeightsError(f"{cfg_path} is not a valid sharezoo config: {type(e).__name__}: {e}") from e
    if cfg.get("sha256"):  # recorded by save_pretrained: a changed weights file is refused, not loaded
        verify_sha256(weights, str(cfg["sha256"]), f"local-dir:{folder}", f"{cfg_path} (key 'sha256')",
                      "The weights file was changed or damaged after it was saved.")
    try:
        entry = model_entrypoint(arch)
    except ValueError as e:
        raise PretrainedWeightsError(f"{cfg_path}: key 'architecture': {e}") from e
    model_kwargs = cfg.get("model_kwargs") or {}
    if not isinstance(model_kwargs, dict):
        raise PretrainedWeightsError(f"{cfg_path}: key 'model_kwargs' must be a mapping, not {model_kwargs!r}")
    try:
        model = entry(pretrained=False, **{**model_kwargs, **kwargs})
    except TypeError as e:
        bad = [k for k in model_kwargs if f"'{k}'" in str(e)]
        where = f"key 'model_kwargs.{bad[0]}'" if bad else "key 'model_kwargs'"
        raise PretrainedWeightsError(f"{cfg_path}: {where} is not accepted by {arch}: {e}") from e
    load_into(model, load_state_dict_file(weights), str(weights))
    if cfg.get("pretrained_cfg"):
        model.pretrained_cfg = cfg["pretrained_cfg"]
    return model


def _hub_snapshot(repo_id: str, cache_dir: str | os.PathLike | None) -> Path:
    from huggingface_hub import hf_hub_download

    try:
        paths = [Path(hf_hub_download(repo_id, f, cache_dir=cache_dir, local_files_only=is_offline()))
                 for f in (CONFIG_NAME, WEIGHTS_NAME)]
    except Exception as e:  # noqa: BLE001
        raise PretrainedWeightsError(
            f"hf-hub:{repo_id}: could not get {CONFIG_NAME}/{WEIGHTS_NAME}"
            f"{' from the local HF cache (offline)' if is_offline() else ''}: {e}"
        ) from e
    return paths[0].parent
