"""The import graph of ``zoo``, ``datamodules`` and ``tasks`` follows the layers and has no cycles.

zoo (never imports Lightning, datamodules or tasks) <- datamodules (never imports tasks) <- tasks (never imports
tasks.cli, which sits on top) <- tasks.cli. Outside zoo only zoo's public names are imported (no ``zoo._x``).
Every import counts: module level, inside functions, under ``if TYPE_CHECKING``. Read with ``ast``, nothing
is imported.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("zoo", "datamodules", "tasks")
LIGHTNING = ("lightning", "pytorch_lightning", "lightning_fabric", "lightning_utilities")
CLI = "tasks.cli"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


FILES = {_module_name(p): p for pkg in PACKAGES for p in sorted((ROOT / pkg).rglob("*.py"))}


def _imports(name: str, path: Path) -> list[tuple[str, int]]:
    """Absolute names this module imports (``from a import b`` gives ``a.b`` when that is a module, else ``a``)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out += [(a.name, node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            for a in node.names:
                sub = f"{mod}.{a.name}"
                out.append((sub if sub in FILES or a.name.startswith("_") and mod in PACKAGES else mod, node.lineno))
    return out


GRAPH = {name: _imports(name, path) for name, path in FILES.items()}


def _under(mod: str, *roots: str) -> bool:
    return any(mod == r or mod.startswith(r + ".") for r in roots)


def _violations() -> list[str]:
    bad = []
    for name, imports in GRAPH.items():
        where = f"{FILES[name].relative_to(ROOT)}"
        for mod, line in imports:
            if _under(name, "zoo") and _under(mod, *LIGHTNING, "datamodules", "tasks"):
                bad.append(f"{where}:{line}: zoo imports {mod}")
            if _under(name, "datamodules") and _under(mod, "tasks"):
                bad.append(f"{where}:{line}: datamodules imports {mod}")
            if _under(name, "tasks") and not _under(name, CLI) and _under(mod, CLI):
                bad.append(f"{where}:{line}: {name} imports the CLI ({mod})")
            if not _under(name, "zoo") and _under(mod, "zoo") and any(p.startswith("_") for p in mod.split(".")[1:]):
                bad.append(f"{where}:{line}: private zoo module {mod} imported outside zoo")
    return bad


def _cycles() -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), over imports between our own modules."""
    edges = {n: sorted({m for m, _ in imps if m in FILES and m != n}) for n, imps in GRAPH.items()}
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return out


def test_the_scan_sees_the_packages():
    assert {"zoo", "datamodules", "tasks", CLI} <= set(FILES) and len(FILES) > 20
    assert any(m == "zoo" for m, _ in GRAPH["datamodules.reid"])  # sanity: imports are resolved


def test_no_upward_or_private_imports():
    bad = _violations()
    assert not bad, "layering violations:\n" + "\n".join(bad)


def test_no_import_cycles():
    cycles = _cycles()
    assert not cycles, "import cycles:\n" + "\n".join(" <-> ".join(c) for c in cycles)


@pytest.mark.parametrize("src,expected", [
    ("from zoo._registry import x", "zoo._registry"),
    ("from zoo import _registry", "zoo._registry"),
    ("import pytorch_lightning as pl", "pytorch_lightning"),
])
def test_import_resolution(src, expected, tmp_path):
    p = tmp_path / "m.py"
    p.write_text(src)
    assert [m for m, _ in _imports("tasks.m", p)] == [expected]



def _calls(text: str, name: str) -> list[str]:
    """The source of each call ``name(...)`` in ``text`` (parentheses balanced)."""
    out, start = [], text.find(name + "(")
    while start >= 0:
        depth, j = 0, start + len(name)
        while True:
            depth += {"(": 1, ")": -1}.get(text[j], 0)
            j += 1
            if depth == 0:
                break
        out.append(text[start:j])
        start = text.find(name + "(", j)
    return out


def test_pickles_load_only_with_weights_only(monkeypatch):
    """Every torch.load in the library and the benchmarks passes weights_only=True, nothing passes False, and
    ZooTask.load_from_checkpoint (every task's) defaults it to True: reading a checkpoint never runs its code."""
    import pytorch_lightning as pl

    from tasks._base import ZooTask

    bad = []
    for folder in ("zoo", "datamodules", "tasks", "benchmarks"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            text = path.read_text()
            bad += [f"{path.relative_to(ROOT)}: {c}" for c in _calls(text, "torch.load") if "weights_only=True" not in c]
            bad += [f"{path.relative_to(ROOT)}: weights_only=False"] * text.count("weights_only=False")
    assert not bad, bad
    seen: dict = {}
    monkeypatch.setattr(pl.LightningModule, "load_from_checkpoint",
                        classmethod(lambda cls, path, *args, **kw: seen.update(kw)))
    ZooTask.load_from_checkpoint("some.ckpt", map_location="cpu")
    assert seen == {"map_location": "cpu", "weights_only": True}
