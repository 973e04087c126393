"""notebooks/ppgflowecg.ipynb runs top to bottom on CPU (a short in-notebook training; nbclient)."""
from __future__ import annotations

import base64
import os
from pathlib import Path

import pytest

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "ppgflowecg.ipynb"


@pytest.mark.slow  # ~70 s on 2 shared cores (kernel start + a short training)
def test_ppgflowecg_notebook_executes(tmp_path):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    pytest.importorskip("matplotlib")
    from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel

    try:
        KernelSpecManager().get_kernel_spec("python3")
    except NoSuchKernel:
        pytest.skip("no python3 Jupyter kernel (pip install ipykernel)")
    nb = nbformat.read(NOTEBOOK, as_version=4)
    client = nbclient.NotebookClient(nb, timeout=300, kernel_name="python3",
                                     resources={"metadata": {"path": str(tmp_path)}})
    client.execute(env={**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "", "HF_HUB_OFFLINE": "1",
                        "PPGFLOWECG_NB_STEPS": "15", "PPGFLOWECG_DEMO_CKPT": str(tmp_path / "none.ckpt"),
                        "SHAREZOO_CACHE": str(tmp_path / "cache")})
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    pngs = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(pngs) >= 2 and base64.b64decode(pngs[0]["data"]["image/png"])[:4] == b"\x89PNG"
    text = "".join(o.get("text", "") for o in outputs)
    assert "stage 2 loss" in text and "mean paired latent distance" in text and "generated, seed 2" in text
