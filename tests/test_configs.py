"""Every shipped YAML resolves through the CLI's own parser (``sharezoo fit --config X --print_config``): includes
applied, every key checked against the class it names, nothing built.

A dataset file composes: ``config: recipe.yaml`` loads the family recipe (path relative to the file) and each
dotted key after it (``data.init_args.layout: dukemtmc``) overrides one value; a nested mapping there would
replace the recipe's whole section instead.
"""
from __future__ import annotations

import contextlib
import io
from pathlib import Path

import pytest
import pytorch_lightning as pl
import yaml
from jsonargparse import ArgumentParser

from tasks._lightning_cli import lightning_cli

ROOT = Path(__file__).resolve().parents[1]
CLI_KEYS = {"model", "data", "trainer", "config", "seed_everything"}


def _is_cli_config(path: Path) -> bool:
    """A LightningCLI config (LLM-side script configs such as configs/kv_cache/ are read by their own script)."""
    return bool(CLI_KEYS & set(yaml.safe_load(path.read_text()) or {}))


ALL = sorted(p for p in (ROOT / "configs").rglob("*.yaml") if "_base" not in p.parts)
CONFIGS = [p for p in ALL if _is_cli_config(p)]
BASES = sorted((ROOT / "configs" / "_base").glob("*.yaml"))
INCLUDING = [p for p in CONFIGS if "config" in (yaml.safe_load(p.read_text()) or {})]


def resolve(*args: str) -> dict:
    """The whole config ``sharezoo fit ARGS --print_config`` prints, as a dict (fails on any parse error)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            lightning_cli(["fit", *args, "--print_config"])
        except SystemExit as e:
            assert e.code in (0, None), f"{args}: {err.getvalue()[-3000:]}"
    cfg = yaml.safe_load(out.getvalue())
    assert isinstance(cfg, dict), f"{args}: nothing printed; {err.getvalue()[-3000:]}"
    return cfg


@pytest.mark.filterwarnings("ignore:LightningCLI's args parameter")
@pytest.mark.parametrize("path", CONFIGS, ids=[str(p.relative_to(ROOT / "configs")) for p in CONFIGS])
def test_shipped_config_resolves(path):
    cfg = resolve("--config", str(path))
    for key in ("model", "data"):
        assert cfg.get(key) and cfg[key].get("class_path"), f"{path}: a config names its {key} class"
    assert "config" not in cfg or not isinstance(cfg["config"], str), "an include is resolved, not printed"


@pytest.mark.filterwarnings("ignore:LightningCLI's args parameter")
@pytest.mark.parametrize("path", INCLUDING, ids=[str(p.relative_to(ROOT / "configs")) for p in INCLUDING])
def test_an_including_file_is_its_base_plus_its_overrides(path, tmp_path, monkeypatch):
    """Alone (one --config, from any working directory) it equals its base followed by it on the command line,
    its include comes first, a section is set through dotted keys (one value each), and each lands in the resolved
    config."""
    raw = yaml.safe_load(path.read_text())
    base = (path.parent / raw["config"]).resolve()
    assert base.is_file() and base.parent == path.parent, f"{path}: includes a file of its own family folder"
    monkeypatch.chdir(tmp_path)
    alone = resolve("--config", str(path))
    assert alone == resolve("--config", str(base), "--config", str(path))
    assert next(iter(raw)) == "config", f"{path}: `config:` comes first (the include overwrites keys before it)"
    for key, value in raw.items():
        if key == "config":
            continue
        assert "." in key or not isinstance(value, dict), f"{path}: {key!r}: use dotted keys (a mapping replaces the " \
            "whole section)"
        node = alone
        for part in key.split("."):
            node = node[part]
        assert node == value, f"{path}: {key}"


def test_config_folders_are_families():
    """configs/<family>/ where family is a zoo module (LLM-side folders: the method's module)."""
    import importlib.util

    for d in sorted({p.parent for p in CONFIGS}):
        assert (importlib.util.find_spec(f"zoo.{d.name}") or importlib.util.find_spec(f"tasks.llm.{d.name}")
                or importlib.util.find_spec(f"tasks.llm.methods.{d.name}")), f"configs/{d.name}: no family by that name"


@pytest.mark.parametrize("path", BASES, ids=[p.name for p in BASES])
def test_base_fragments_parse(path):
    cfg = yaml.safe_load(path.read_text())
    parser = ArgumentParser(exit_on_error=False)
    parser.add_class_arguments(pl.Trainer, "trainer")
    parser.parse_object({"trainer": cfg.get("trainer", {})})


@pytest.mark.filterwarnings("ignore:LightningCLI's args parameter")
def test_base_fragment_composes_with_a_family_config():
    cfg = resolve("--config", str(ROOT / "configs/fusionreid/market1501.yaml"),
                  "--config", str(ROOT / "configs/_base/ddp.yaml"))
    assert cfg["trainer"]["strategy"] not in (None, "auto") and cfg["data"]["init_args"]["layout"] == "market1501"
