"""benchmarks/neuropictor_official.py: the official NeuroPictor training step runs end to end on a CPU (reduced config).

Needs the official code in the git-ignored ``.upstream/neuropictor`` (``benchmarks/fetch_upstream.sh neuropictor``)
and its pinned packages as wheels in the git-ignored ``.whl/official/`` (open_clip_torch 2.23.0, omegaconf 2.3.0,
antlr4-python3-runtime 4.9.3, timm 0.6.13); skips when either is absent (CI has neither).
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from official_helpers import install_site, run_harness

ROOT = Path(__file__).resolve().parents[1]
REPO = ROOT / ".upstream" / "neuropictor"
WHEELS = sorted((ROOT / ".whl" / "official").glob("*.whl"))
NEEDED = ("open_clip_torch-2.23", "omegaconf-", "antlr4_python3_runtime-", "timm-0.6")


@pytest.mark.script
@pytest.mark.skipif(not (REPO / "cldm" / "cldm_fmri_surf.py").is_file(),
                    reason="official NeuroPictor code absent (benchmarks/fetch_upstream.sh neuropictor)")
@pytest.mark.skipif(not all(any(w.name.startswith(n) for w in WHEELS) for n in NEEDED),
                    reason="wheels for the official code absent from .whl/official/")
def test_official_step_tiny_cpu(tmp_path):
    site = install_site(WHEELS, tmp_path / "site", timeout=120)
    out = tmp_path / "official.jsonl"
    r = run_harness("neuropictor_official.py", "--site", str(site), "--out", str(out))
    assert r.returncode == 0, r.stderr[-3000:]
    (row,) = [json.loads(line) for line in out.read_text().splitlines()]
    assert row["impl"] == "official" and row["bench"] == "train" and row["mode"] == "eager"
    assert row["command"].startswith("python3 benchmarks/neuropictor_official.py") and "git_commit" in row
    assert row["open_clip"].startswith("2.23") and row["attention"] == "xformers-sdpa"
    assert row["step_ms_median"] > 0 and row["samples_per_s"] > 0 and row["last_loss"] == row["last_loss"]  # not NaN
    # the optimizer holds encoder + semantic network + ControlNet; the frozen UNet still computes weight gradients
    assert row["trainable_params"] == row["controlnet_params"] + row["fmri_encoder_params"] + row["semantic_params"]
    assert row["updated_params"] < row["trainable_params"] < row["grad_params"] < row["params"]
