"""The rank-list notebook runs top to bottom on CPU (it trains the tiny model briefly on synthetic data itself)."""
from __future__ import annotations

import base64


def test_ranklist_notebook_executes(tmp_path, run_notebook):
    def fewer_epochs(nb):  # this checks that it runs, not how well the model ranks
        nb.cells[1].source = nb.cells[1].source.replace("TRAIN_EPOCHS = 8", "TRAIN_EPOCHS = 1")

    outputs = run_notebook("fusionreid_ranklist.ipynb", cwd=tmp_path, edit=fewer_epochs)
    pngs = [o for o in outputs if "image/png" in o.get("data", {})]
    assert pngs and base64.b64decode(pngs[0]["data"]["image/png"])[:4] == b"\x89PNG"
    text = "".join(o.get("text", "") for o in outputs)
    assert "mAP" in text and "query 0:" in text
    assert (tmp_path / "runs" / "demo_data" / "market1501" / "query").is_dir()
