"""notebooks/inpainting.ipynb runs top to bottom (nbclient); skipped when no Jupyter kernel is available."""
import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_inpainting_notebook_executes(tmp_path):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    try:
        from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel

        KernelSpecManager().get_kernel_spec("python3")
    except (ImportError, NoSuchKernel) as e:  # pragma: no cover
        pytest.skip(f"no python3 Jupyter kernel: {e}")
    nb = nbformat.read(ROOT / "notebooks" / "inpainting.ipynb", as_version=4)
    env_before = {k: os.environ.get(k) for k in ("MPLBACKEND", "OMP_NUM_THREADS", "PYTHONPATH")}
    os.environ.pop("MPLBACKEND", None)  # the kernel's inline backend renders the figures
    os.environ["OMP_NUM_THREADS"] = "1"
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env_before["PYTHONPATH"]]))
    try:
        client = nbclient.NotebookClient(nb, timeout=240, kernel_name="python3",
                                         resources={"metadata": {"path": str(ROOT)}})
        client.execute()
    finally:
        for k, v in env_before.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    outputs = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []))
    assert "strongest candidate" in outputs and "L1 in the hole" in outputs
    images = [o for c in nb.cells for o in c.get("outputs", []) if "image/png" in o.get("data", {})]
    assert len(images) >= 2
