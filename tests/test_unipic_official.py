"""benchmarks/unipic_official.py: the official UniPic-1 training step and sampler run end to end on a CPU (reduced).

Needs the official code in the git-ignored ``.upstream/UniPic`` (``benchmarks/fetch_upstream.sh UniPic``) and its
pinned packages as wheels in the git-ignored ``.whl/official_unipic/`` (transformers 4.45.2, tokenizers 0.20.3 for this
Python, huggingface-hub 0.26.5, accelerate 1.0.1, timm 0.9.12, mmengine 0.10.7, xtuner 0.2.0 and mmengine's pure-Python
dependencies); skips when either is absent (CI has neither).
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from official_helpers import install_site, run_harness

ROOT = Path(__file__).resolve().parents[1]
REPO = ROOT / ".upstream" / "UniPic" / "UniPic-1"
TAG = f"cp{sys.version_info.major}{sys.version_info.minor}"
WHEELS = [w for w in sorted((ROOT / ".whl" / "official_unipic").glob("*.whl"))
          if not w.name.startswith("tokenizers-") or f"-{TAG}-" in w.name]
NEEDED = ("transformers-4.45.2", "tokenizers-0.20", "huggingface_hub-0.26", "accelerate-1.0", "timm-0.9.12",
          "mmengine-", "xtuner-", "addict-", "yapf-", "termcolor-", "platformdirs-")


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    return install_site(WHEELS, tmp_path_factory.mktemp("official_unipic") / "site")


pytestmark = [
    pytest.mark.script,
    pytest.mark.skipif(not (REPO / "src" / "models" / "skywork_unipic_dev.py").is_file(),
                       reason="official UniPic code absent (benchmarks/fetch_upstream.sh UniPic)"),
    pytest.mark.skipif(not all(any(w.name.startswith(n) for w in WHEELS) for n in NEEDED),
                       reason="wheels for the official code absent from .whl/official_unipic/"),
]


def _rows(site: Path, tmp_path: Path, *args: str) -> list[dict]:
    out = tmp_path / "official.jsonl"
    r = run_harness("unipic_official.py", *args, "--site", str(site), "--out", str(out))
    assert r.returncode == 0, r.stderr[-3000:]
    return [json.loads(line) for line in out.read_text().splitlines()]


def test_official_train_step_tiny_cpu(site, tmp_path):
    stage1, stage3 = _rows(site, tmp_path, "train")
    for row in (stage1, stage3):
        assert row["impl"] == "official" and row["bench"] == "train" and row["compile"] == "eager"
        assert row["command"].startswith("python3 benchmarks/unipic_official.py") and "git_commit" in row
        assert row["versions"]["transformers"] == "4.45.2" and row["versions"]["timm"] == "0.9.12"
        assert row["gradient_checkpointing"] and row["step_s_median"] > 0
        assert all(loss == loss for loss in row["losses"])  # not NaN
        # the same byte-level prompt as ours: "Generate an image: <caption>" in ChatML, one token per byte
        assert row["prompt_tokens"]["text2image"] == 72
    # stage1_pt: text-to-image only, LLM frozen; stage3_ct: all three losses, everything but the VAE trained
    assert set(stage1["last_losses"]) == {"loss_text2image"} and stage1["stage"] == "stage1_pt"
    assert set(stage3["last_losses"]) == {"loss_text2image", "loss_image_edit", "loss_image2text"}
    assert stage1["trainable_m"] == pytest.approx(stage1["params_m"] - stage1["vae_m"] - stage1["llm_m"])
    assert stage3["trainable_m"] == pytest.approx(stage3["params_m"] - stage3["vae_m"])


def test_official_generation_tiny_cpu(site, tmp_path):
    (row,) = _rows(site, tmp_path, "gen")
    assert row["impl"] == "official" and row["bench"] == "gen" and row["cfg"] == 3.0 and row["num_iter"] == 4
    assert row["image_shape"] == [1, 3, 64, 64] and row["image_finite"] and row["seconds_run1"] > 0
    assert row["prompt_tokens"] == [72, 37]  # the prompt and the negative prompt "Generate an image."
