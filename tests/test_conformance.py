"""Every registered model and its family have what docs/CONTRIBUTING.md asks of them.

Per model (``zoo.list_models()``): a ``*_tiny`` model builds for real, has a card and round-trips
``zoo.save_pretrained`` -> ``zoo.create_model('local-dir:...')`` (same class, architecture, state dict and outputs);
any other model builds on the meta device (no memory) and has a ``*_tiny`` sibling in its family.
Per family (the ``zoo`` module that registers it): ``configs/<family>/`` with a LightningCLI config and a demo
(``*demo*.yaml``, what ``sharezoo demo`` lists), a row in README's family table, a notebook
``notebooks/<family>*.ipynb`` and a test file ``tests/test_*<family>*.py``.
"""
from __future__ import annotations

import importlib
import pkgutil
import re
from pathlib import Path

import pytest
import torch
from torch.nn.utils.parametrize import type_before_parametrizations

import zoo

ROOT = Path(__file__).resolve().parents[1]
MODELS = zoo.list_models()


def _families() -> dict[str, list[str]]:
    """family (zoo module name) -> the model names it registers."""
    out: dict[str, list[str]] = {}
    for info in pkgutil.iter_modules(zoo.__path__):
        if info.name.startswith("_"):
            continue
        mod = importlib.import_module(f"zoo.{info.name}")
        names = [n for n in MODELS if getattr(getattr(mod, n, None), "__module__", None) == mod.__name__]
        if names:
            out[info.name] = names
    return out


FAMILIES = _families()
FAMILY_OF = {n: fam for fam, names in FAMILIES.items() for n in names}


def _is_tiny(name: str) -> bool:
    return name.endswith("_tiny")


def test_every_model_belongs_to_a_family_module():
    assert MODELS and set(FAMILY_OF) == set(MODELS), sorted(set(MODELS) - set(FAMILY_OF))


def test_every_family_module_is_registered_in_zoo_init():
    """The one registration line: ``from . import <family>`` in zoo/__init__.py."""
    text = (ROOT / "zoo" / "__init__.py").read_text()
    imported = {n.strip() for m in re.finditer(r"^from \. import ([\w, ]+)", text, re.M) for n in m[1].split(",")}
    assert set(FAMILIES) <= imported, sorted(set(FAMILIES) - imported)


def _needs_optional_package(e: ImportError) -> None:
    """A model whose weights ship in a separate package (CMRAG's MiniLM towers) skips where it is not installed (the
    GPU image); the default CI installs every dependency, so it runs there."""
    pytest.skip(f"a model dependency is not installed here: {e}")


@pytest.mark.parametrize("name", MODELS)
def test_model_card(name):
    try:
        card = zoo.model_card_dict(name)  # also counts the parameters on the meta device
    except ImportError as e:
        _needs_optional_package(e)
    assert card["params"] > 0
    for key in ("paper", "url"):
        assert isinstance(card.get(key), str) and card[key].strip(), f"{name}: MODEL_CARD[{key!r}] missing"
    assert isinstance(card.get("deviations"), list), f"{name}: MODEL_CARD['deviations'] (a list; [] if none) missing"
    assert card["summary"], f"{name}: the entrypoint needs a docstring (the card's summary)"


@pytest.mark.parametrize("name", [n for n in MODELS if not _is_tiny(n)])
def test_large_model_builds_on_meta_and_has_a_tiny_sibling(name):
    try:
        with torch.device("meta"):
            model = zoo.create_model(name)
    except ImportError as e:
        _needs_optional_package(e)
    assert sum(p.numel() for p in model.parameters()) > 0
    assert any(_is_tiny(n) for n in FAMILIES[FAMILY_OF[name]]), f"{name}: family {FAMILY_OF[name]} has no *_tiny"


def _assert_same_state(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb)
    for k in sa:
        assert sa[k].dtype == sb[k].dtype and torch.equal(sa[k], sb[k]), k


@pytest.mark.parametrize("name", [n for n in MODELS if _is_tiny(n)])
def test_tiny_model_round_trips_through_local_dir(name, tmp_path):
    torch.manual_seed(0)
    model = zoo.create_model(name).eval()
    with torch.no_grad():  # every parameter and buffer non-default, so a load that silently skips one is seen
        for t in model.state_dict().values():
            if t.is_floating_point():
                t.add_(torch.rand_like(t) * 1e-2)
    folder = zoo.save_pretrained(model, tmp_path / name)
    folder = folder if folder.is_dir() else folder.parent
    loaded = zoo.create_model(f"local-dir:{folder}").eval()
    assert type_before_parametrizations(loaded) is type_before_parametrizations(model) and repr(loaded) == repr(model)
    _assert_same_state(model, loaded)
    # built by the same entrypoint with the same kwargs (what repr does not show, e.g. a float used in forward)
    assert (loaded.model_name, loaded.model_kwargs) == (model.model_name, model.model_kwargs)
    cfg = zoo.resolve_data_config(model)
    if len(cfg.get("input_size") or ()) == 3:  # an image model: the same outputs on the same input
        x = torch.randn(2, *cfg["input_size"])
        with torch.no_grad():
            torch.testing.assert_close(model(x), loaded(x), rtol=0, atol=0)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_family_has_configs_readme_row_notebook_and_tests(family):
    import yaml

    folder = ROOT / "configs" / family
    yamls = sorted(folder.glob("*.yaml"))
    assert yamls, f"configs/{family}/ with at least one LightningCLI config"
    assert any("demo" in p.stem for p in yamls), f"configs/{family}/demo.yaml (listed by `sharezoo demo`)"
    named = {(yaml.safe_load(p.read_text()) or {}).get("model", {}).get("init_args", {}).get("model") for p in yamls}
    assert named & set(FAMILIES[family]), f"configs/{family}/: no config builds a {family} model"

    readme = (ROOT / "README.md").read_text().splitlines()
    start = next(i for i, ln in enumerate(readme) if ln.startswith("| family |"))
    end = next((i for i in range(start, len(readme)) if not readme[i].startswith("|")), len(readme))
    rows = readme[start + 2: end]
    assert any(any(f"`{n}`" in row for n in FAMILIES[family]) for row in rows), \
        f"README's family table: a row naming a {family} model in backticks"

    assert sorted((ROOT / "notebooks").glob(f"{family}*.ipynb")), f"notebooks/{family}*.ipynb"
    assert sorted((ROOT / "tests").glob(f"test_*{family}*.py")), f"tests/test_*{family}*.py"
