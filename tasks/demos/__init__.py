"""The demos behind ``sharezoo demo [NAME]``: every ``configs/<family>/*demo*.yaml``, plus the demos a family writes.

A family adds a demo by adding a config whose file name contains ``demo``: ``configs/<family>/demo.yaml`` is the demo
``<family>``, ``configs/<family>/<stem>.yaml`` the demo ``<family>/<stem>``; it runs ``sharezoo fit`` on that config
and its first comment sentence is its one-line description. A demo that does more (several stages, a results
table) is a module here defining ``DEMO = Demo(...)``; the configs it names are then listed under its name only.
"""
from __future__ import annotations

import importlib
import pkgutil
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = ROOT / "configs"


@dataclass(frozen=True)
class Demo:
    """One runnable demo.

    Args:
        name: what ``sharezoo demo NAME`` takes (the family, or ``family/stem``).
        summary: one line for the listing.
        run: ``run(argv) -> exit status``; ``argv`` are the options after the name.
        configs: the configs it runs, relative to ``configs/`` (glob patterns allowed); a config demo of the same
            file is not listed separately.
    """

    name: str
    summary: str
    run: Callable[[Sequence[str]], int]
    configs: tuple[str, ...] = field(default=())


def config_summary(path: Path, width: int = 80) -> str:
    """The first sentence of the comment block a config starts with (shortened to ``width``)."""
    text = []
    for line in path.read_text().splitlines():
        if not line.startswith("#"):
            break
        text.append(line.lstrip("#").strip())
    words = " ".join(t for t in text if t)
    if not words:
        return "sharezoo fit on this config"
    sentence = re.split(r"(?<=\.)\s(?=[A-Z])", words, maxsplit=1)[0].rstrip(".")
    return sentence if len(sentence) <= width else sentence[: width - 1].rstrip() + "…"


def config_demo_name(path: Path) -> str:
    return path.parent.name if path.stem == "demo" else f"{path.parent.name}/{path.stem}"


def _fit_config(path: Path) -> Callable[[Sequence[str]], int]:
    def run(argv: Sequence[str]) -> int:
        from tasks._lightning_cli import lightning_cli

        lightning_cli(["fit", "--config", str(path), *argv])
        return 0

    return run


def results_recipe(family: str, doc: str | None) -> Callable[[Sequence[str]], int]:
    """``run`` of a demo that is its family's CPU results recipe: ``python -m tasks.results.<family>`` on
    ``configs/<family>/results_cpu.yaml`` (``--config`` picks another; every other option goes to the runner)."""
    def run(argv: Sequence[str] = ()) -> int:
        import argparse

        p = argparse.ArgumentParser(prog=f"sharezoo demo {family}", description=doc,
                                    formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False)
        p.add_argument("--config", default=str(CONFIGS / family / "results_cpu.yaml"), help="results recipe")
        a, rest = p.parse_known_args(list(argv))
        importlib.import_module(f"tasks.results.{family}").run(["--config", a.config, *rest])
        return 0

    return run


def family_demos() -> list[Demo]:
    """The demos the modules of this package declare (``DEMO``)."""
    out = []
    for info in pkgutil.iter_modules(__path__):
        if not info.name.startswith("_"):
            demo = getattr(importlib.import_module(f"{__name__}.{info.name}"), "DEMO", None)
            if isinstance(demo, Demo):
                out.append(demo)
    return out


def list_demos(configs: Path = CONFIGS) -> dict[str, Demo]:
    """Every demo by name: the family demos first claim their configs, then one per remaining demo config."""
    special = family_demos()
    claimed = {p.resolve() for d in special for pattern in d.configs for p in configs.glob(pattern)}
    demos = {d.name: d for d in special}
    for path in sorted(configs.glob("*/*demo*.yaml")):
        name = config_demo_name(path)
        if path.resolve() in claimed or name in demos or path.parent.name.startswith("_"):
            continue
        rel = path.relative_to(configs.parent) if path.is_relative_to(configs.parent) else path
        demos[name] = Demo(name, f"{config_summary(path)} [{rel}]", _fit_config(path))
    return dict(sorted(demos.items()))
