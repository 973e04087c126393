"""benchmarks/cronusvla_official.py: the official CronusVLA ``predict_action`` runs end to end on a CPU (tiny sizes).

Needs the official code in the git-ignored ``.upstream/CronusVLA`` (``benchmarks/fetch_upstream.sh CronusVLA``) and its
pinned packages as wheels in the git-ignored ``.whl/official_cronusvla/`` (transformers 4.40.1, tokenizers 0.19.1 for
this Python, huggingface-hub 0.26.5, timm 0.9.10, draccus 0.8.0 and its pure-Python dependencies); skips when either is
absent (CI has neither).
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from official_helpers import install_site, run_harness

ROOT = Path(__file__).resolve().parents[1]
REPO = ROOT / ".upstream" / "CronusVLA"
TAG = f"cp{sys.version_info.major}{sys.version_info.minor}"
WHEELS = [w for w in sorted((ROOT / ".whl" / "official_cronusvla").glob("*.whl"))
          if not w.name.startswith("tokenizers-") or f"-{TAG}-" in w.name]
NEEDED = ("transformers-4.40", "tokenizers-0.19", "huggingface_hub-0.26", "timm-0.9", "draccus-0.8", "mergedeep-",
          "pyyaml_include-", "toml-", "typing_inspect-", "mypy_extensions-")


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    return install_site(WHEELS, tmp_path_factory.mktemp("official_cronusvla") / "site")


@pytest.mark.script
@pytest.mark.skipif(not (REPO / "vla" / "cronusvla.py").is_file(),
                    reason="official CronusVLA code absent (benchmarks/fetch_upstream.sh CronusVLA)")
@pytest.mark.skipif(not all(any(w.name.startswith(n) for w in WHEELS) for n in NEEDED),
                    reason="wheels for the official code absent from .whl/official_cronusvla/")
@pytest.mark.parametrize("model,frames,llm", [("7b", 7, "llama"), ("0_5b", 4, "qwen")])
def test_official_predict_action_tiny_cpu(site, model, frames, llm):
    r = run_harness("cronusvla_official.py", "--model", model, "--site", str(site))
    assert r.returncode == 0, r.stderr[-3000:]
    row = json.loads(r.stdout.strip().splitlines()[-1])
    assert row["impl"] == "official" and row["model"] == model and row["frames"] == frames
    assert row["versions"]["transformers"] == "4.40.1" and row["versions"]["timm"] == "0.9.10"
    # their chunk: 16 steps x 7 dims, unnormalised; the cognition feature of the current frame is returned too
    assert row["actions_shape"] == [16, 7] and row["actions_finite"] and row["feature_shape"] == [1, 1, 64]
    assert row["step_ms_median"] > 0 and row["prompt_tokens"] > 2 and row["attn"] in ("sdpa", "eager")
