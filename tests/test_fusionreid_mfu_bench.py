"""The FusionReID MFU matrix (benchmarks/fusionreid_mfu.py, issue 24 item 5) in its CPU smoke mode."""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _load():
    spec = importlib.util.spec_from_file_location("fusionreid_mfu", ROOT / "benchmarks" / "fusionreid_mfu.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


mfu = _load()


def test_variant_specs_compose():
    base = mfu.variant_spec("base")
    assert base == {**mfu.BASE, "inductor": {}}
    s = mfu.variant_spec("base+autotune+cdt+tma+flash+b256+nocl")
    assert s["compile"] == "max-autotune-no-cudagraphs" and s["batch"] == 256 and s["sdpa"] == "flash"
    assert s["channels_last"] is False and s["cuda_graphs"] is True
    assert s["inductor"] == {"coordinate_descent_tuning": True, "triton.enable_persistent_tma_matmul": True}
    assert mfu.BASE["inductor"] == {}  # composing never mutates the base
    with pytest.raises(ValueError, match="unknown modifier"):
        mfu.variant_spec("base+nope")


def test_inductor_options_are_restored_and_missing_ones_named():
    import torch._inductor.config as cfg

    before = cfg.coordinate_descent_tuning
    with mfu.inductor_options({"coordinate_descent_tuning": not before, "no_such_option_xyz": 1}) as (applied, miss):
        assert cfg.coordinate_descent_tuning is (not before)
        assert applied == {"coordinate_descent_tuning": not before} and miss == ["no_such_option_xyz"]
    assert cfg.coordinate_descent_tuning is before


def test_kernel_categories():
    cat = mfu.kernel_category
    assert cat("cudnn_generated_fort_native_sdpa_sm90_flash_fprop_wgmma_f16_knob_3") == "attention"
    assert cat("sm90_xmma_fprop_implicit_gemm_bf16bf16_bf16f32_f32_nhwckrsc_nhwc") == "conv"
    assert cat("nvjet_tst_128x256_64x4_1x2_h_bz_coopA_NNT") == "gemm"
    assert cat("triton_poi_fused_convolution_backward_3") == "triton fused (pointwise/reduction)"
    assert cat("aten::mm") == "gemm"


@pytest.mark.script
def test_tiny_cpu_matrix_same_loss(tmp_path, monkeypatch):
    """The smoke mode runs base, channels-last off and a forced SDPA backend with inductor options, one JSON line
    each plus a profile table; the first step's loss (same weights, batch, seed) agrees across them."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    out = tmp_path / "mfu"
    rc = mfu.main(["--tiny", "--device", "cpu", "--variant", "base", "--variant", "base+nocl",
                   "--variant", "base+flash+cdt", "--steps", "2", "--warmup", "1", "--profile-steps", "1",
                   "--out", str(out)])
    assert rc == 0
    recs = {r["variant"]: r for r in map(json.loads, (out / "fusionreid_mfu.jsonl").read_text().splitlines())}
    assert set(recs) == {"base", "base+nocl", "base+flash+cdt"}
    for r in recs.values():
        assert "error" not in r and r["samples_per_s"] > 0 and r["flops_fwd_bwd_per_sample"] > 0
        assert r["batch"] == 32 and r["compile"] == "off" and Path(r["profile_file"]).is_file()
    assert recs["base+flash+cdt"]["inductor_applied"] == {"coordinate_descent_tuning": True}
    assert recs["base"]["flops_fwd_bwd_per_sample"] == recs["base+nocl"]["flops_fwd_bwd_per_sample"]
    ref = recs["base"]["loss_step0"]
    assert recs["base+nocl"]["loss_step0"] == pytest.approx(ref, rel=1e-5)
    assert recs["base+flash+cdt"]["loss_step0"] == pytest.approx(ref, rel=1e-5)
    table = (out / "profile_base.txt").read_text()
    assert "| # | kernel |" in table and "| category |" in table
    assert "base+nocl" in mfu.summary(out) and (out / "summary.md").is_file()


def test_summary_keeps_a_result_over_a_later_error(tmp_path):
    lines = [{"variant": "base", "batch": 128, "samples_per_s": 1774.0, "mfu": 0.316,
              "flops_fwd_bwd_per_sample": 176.4e9},
             {"variant": "base", "error": "timeout after 260s (rc 124)"},
             {"variant": "base+flash", "batch": 128, "samples_per_s": 1863.0, "mfu": 0.332,
              "flops_fwd_bwd_per_sample": 176.4e9},
             {"variant": "base+nocl", "batch": 128, "samples_per_s": 1774.0, "mfu": 0.3,
              "flops_fwd_bwd_per_sample": 160.0e9},
             {"variant": "base+cudnn", "error": "skipped: 40s of the 540s budget left"}]
    (tmp_path / "fusionreid_mfu.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    table = mfu.summary(tmp_path)
    assert "| base | 128 | 1,774 | 31.6% |" in table and "| base+flash | 128 | 1,863 | 33.2% | +5.0% |" in table
    assert "skipped: 40s" in table and "best: base+flash" in table
    assert "FLOPs/sample 160.00 G vs base 176.40 G" in table and table.count("FLOPs/sample") == 1


def test_failing_variant_is_an_error_line(tmp_path):
    out = tmp_path / "mfu"
    assert mfu.main(["--tiny", "--device", "cpu", "--variant", "base+bogus", "--out", str(out)]) == 1
    (rec,) = map(json.loads, (out / "fusionreid_mfu.jsonl").read_text().splitlines())
    assert rec["variant"] == "base+bogus" and "unknown modifier" in rec["error"]


@pytest.mark.script
def test_h200_script_loop(tmp_path):
    """The device script's loop (a process per variant under a timeout, budget skips, the summary), with a stand-in
    for python that writes each variant's line (the real runs are the test above)."""
    fake = tmp_path / "fakepy"
    fake.write_text(r"""#!/usr/bin/env bash
# stand-in for: python3 benchmarks/fusionreid_mfu.py --variant NAME --out D ...  |  ... --summary --out D
while [ $# -gt 0 ]; do case $1 in --variant) v=$2; shift;; --out) d=$2; shift;; --summary) s=1;; esac; shift; done
[ -n "${s:-}" ] && { echo summary > "$d/summary.md"; exit 0; }
printf '{"variant": "%s", "samples_per_s": 1}\n' "$v" >> "$d/fusionreid_mfu.jsonl"
""")
    fake.chmod(0o755)
    script = str(ROOT / "benchmarks" / "fusionreid_mfu_h200.sh")

    def run(case: str, out: Path, **env: str) -> list[dict]:
        p = subprocess.run(["bash", script, case, str(out)], env={**os.environ, "PYTHON": str(fake), **env},
                           capture_output=True, text=True, timeout=60)
        assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
        assert (out / "summary.md").is_file()
        return [json.loads(x) for x in (out / "fusionreid_mfu.jsonl").read_text().splitlines()]

    recs = run("all", tmp_path / "a")
    assert [r["variant"] for r in recs] == ["base", "base+flash", "base+b256", "base+aggr", "base+nocl", "base+cudnn"]
    assert all(r.get("samples_per_s") == 1 for r in recs)
    recs = run("autotune", tmp_path / "b", BUDGET="0", VARIANTS="base+autotune base+autotune+tma")
    assert [r["variant"] for r in recs] == ["base+autotune", "base+autotune+tma"]
    assert all(r["error"].startswith("skipped") for r in recs)
