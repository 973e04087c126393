"""notebooks/inpainting.ipynb runs top to bottom (nbclient); skipped when no Jupyter kernel is available."""
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_inpainting_notebook_executes(run_notebook):
    outputs = run_notebook("inpainting.ipynb", cwd=ROOT, timeout=240)
    text = "".join(o.get("text", "") for o in outputs)
    assert "strongest candidate" in text and "L1 in the hole" in text
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(images) >= 2
