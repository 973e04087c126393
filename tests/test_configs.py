"""Every shipped YAML parses against the classes it names (types checked by jsonargparse, nothing built)."""
from __future__ import annotations

import importlib
from pathlib import Path

import pytest
import pytorch_lightning as pl
import yaml
from jsonargparse import ArgumentParser

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted(p for p in (ROOT / "configs").rglob("*.yaml") if "_base" not in p.parts)
BASES = sorted((ROOT / "configs" / "_base").glob("*.yaml"))


def _cls(class_path: str) -> type:
    mod, _, name = class_path.rpartition(".")
    return getattr(importlib.import_module(mod), name)


def _check_section(section: dict, key: str) -> None:
    cls = _cls(section["class_path"])
    parser = ArgumentParser(exit_on_error=False)
    parser.add_class_arguments(cls, key)
    parser.parse_object({key: section.get("init_args", {})})


@pytest.mark.parametrize("path", CONFIGS, ids=[str(p.relative_to(ROOT / "configs")) for p in CONFIGS])
def test_shipped_config_parses(path):
    cfg = yaml.safe_load(path.read_text())
    assert {"model", "data"} <= set(cfg), f"{path}: a config names its model and data"
    _check_section(cfg["model"], "model")
    _check_section(cfg["data"], "data")
    if "trainer" in cfg:
        parser = ArgumentParser(exit_on_error=False)
        parser.add_class_arguments(pl.Trainer, "trainer")
        trainer = dict(cfg["trainer"])
        # callbacks/loggers are class_path dicts: check they import, then let the Trainer section parse the rest
        for k in ("callbacks", "logger", "plugins"):
            v = trainer.pop(k, None)
            for item in v if isinstance(v, list) else [v] if isinstance(v, dict) else []:
                _cls(item["class_path"])
        parser.parse_object({"trainer": trainer})


@pytest.mark.parametrize("path", BASES, ids=[p.name for p in BASES])
def test_base_fragments_parse(path):
    cfg = yaml.safe_load(path.read_text())
    parser = ArgumentParser(exit_on_error=False)
    parser.add_class_arguments(pl.Trainer, "trainer")
    parser.parse_object({"trainer": cfg.get("trainer", {})})
