"""notebooks/ppgflowecg.ipynb runs top to bottom on CPU (a short in-notebook training; nbclient)."""
from __future__ import annotations

import base64

import pytest


@pytest.mark.slow  # ~70 s on 2 shared cores (kernel start + a short training)
def test_ppgflowecg_notebook_executes(tmp_path, run_notebook):
    pytest.importorskip("matplotlib")
    outputs = run_notebook("ppgflowecg.ipynb", cwd=tmp_path, env={
        "PPGFLOWECG_NB_STEPS": "15", "PPGFLOWECG_DEMO_CKPT": str(tmp_path / "none.ckpt"),
        "SHAREZOO_CACHE": str(tmp_path / "cache")})
    pngs = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(pngs) >= 2 and base64.b64decode(pngs[0]["data"]["image/png"])[:4] == b"\x89PNG"
    text = "".join(o.get("text", "") for o in outputs)
    assert "stage 2 loss" in text and "mean paired latent distance" in text and "generated, seed 2" in text
