"""Execute the notebooks in place and store them with their outputs, so a reader browsing ``notebooks/`` sees the plots.

    python notebooks/execute.py                 # every notebooks/*.ipynb
    python notebooks/execute.py dens3r.ipynb    # some of them

Each runs top to bottom in a python3 Jupyter kernel (nbclient) from a fresh temporary folder (what it writes, such as
``runs/demo_data``, stays out of the repository), offline, on the CPU, with the repository importable. Figures are
stored as PNG at a modest dpi and the per-cell timing metadata is not recorded, so a rerun changes only what the
code prints or draws. ``tests/test_notebooks.py`` executes every notebook the same way (with shorter settings).
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"
#: run in the kernel before the first cell (not stored): PNG figures at a modest resolution keep the files small;
#: tqdm's notebook-widget warning (it names this machine's site-packages) is noise in a stored notebook
SETUP = """%config InlineBackend.figure_format = 'png'
%config InlineBackend.rc = {'figure.dpi': 60, 'savefig.dpi': 60}
import warnings as _w
_w.filterwarnings('ignore', message='IProgress not found')
del _w"""


def kernel_env(env: dict[str, str] | None = None, gpu: bool = False) -> dict[str, str]:
    """The kernel's environment: offline, one thread, CPU only unless ``gpu``, the repository on ``PYTHONPATH``."""
    out = {k: v for k, v in os.environ.items() if k != "MPLBACKEND"}  # the inline backend renders the figures
    out.update(OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", NO_ALBUMENTATIONS_UPDATE="1",
               PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    if not gpu:
        out["CUDA_VISIBLE_DEVICES"] = ""
    out.update(env or {})
    return out


def execute(path: str | os.PathLike, cwd: str | os.PathLike, env: dict[str, str] | None = None,
            edit: Callable[[Any], None] | None = None, timeout: int = 600, gpu: bool = False) -> Any:
    """Run one notebook; returns the executed ``nbformat`` notebook (the file is not written).

    Args:
        path: the ``.ipynb`` file.
        cwd: the kernel's working directory.
        env: extra environment variables for the kernel (a notebook's knobs, e.g. fewer training steps).
        edit: changes the notebook before it runs (tests shorten a parameter cell this way).
        timeout: seconds allowed per cell.
        gpu: leave CUDA devices visible.
    """
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(path, as_version=4)
    if edit is not None:
        edit(nb)
    client = NotebookClient(nb, timeout=timeout, kernel_name="python3", record_timing=False,
                            resources={"metadata": {"path": str(cwd)}})
    with client.setup_kernel(env=kernel_env(env, gpu)):
        client.kc.execute(SETUP, silent=True, store_history=False)  # in order: done before the first cell
        for index, cell in enumerate(nb.cells):
            client.execute_cell(cell, index)
    return nb


def outputs(nb: Any) -> list[dict]:
    """Every output of every code cell."""
    return [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]


def small_png(data: str, colors: int = 256) -> str:
    """A base64 PNG re-encoded with an adaptive palette of ``colors`` (photographic panels compress 3-4x smaller;
    plots look the same)."""
    import base64
    import io

    from PIL import Image

    image = Image.open(io.BytesIO(base64.b64decode(data))).convert("RGB")
    out = io.BytesIO()
    image.quantize(colors=colors, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE).save(
        out, format="PNG", optimize=True)
    smaller = out.getvalue()
    return base64.b64encode(smaller).decode() if len(smaller) < len(data) * 3 // 4 else data


def store(nb: Any, path: str | os.PathLike) -> None:
    """Write an executed notebook without the noise a rerun would change (kernel start times, cell timings), its
    figures re-encoded small (:func:`small_png`)."""
    import nbformat

    for cell in nb.cells:
        cell.metadata.pop("execution", None)
        for out in cell.get("outputs", []):
            if "image/png" in out.get("data", {}):
                out["data"]["image/png"] = small_png(out["data"]["image/png"])
    nb.metadata.pop("widgets", None)
    nbformat.write(nb, path)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python notebooks/execute.py", description=__doc__.split("\n\n")[0])
    p.add_argument("names", nargs="*", help="notebook files in notebooks/ (default: all)")
    p.add_argument("--timeout", type=int, default=900, help="seconds allowed per cell")
    a = p.parse_args(argv)
    paths = [NOTEBOOKS / n for n in a.names] or sorted(NOTEBOOKS.glob("*.ipynb"))
    for path in paths:
        t0 = time.perf_counter()
        with tempfile.TemporaryDirectory(prefix="sharezoo-nb-") as cwd:
            nb = execute(path, cwd, timeout=a.timeout)
        store(nb, path)
        print(f"{path.relative_to(ROOT)}: {len(outputs(nb))} outputs, {path.stat().st_size / 1024:.0f} KiB, "
              f"{time.perf_counter() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
