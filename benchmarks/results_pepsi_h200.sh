#!/usr/bin/env bash
# Issue 16 results recipe on one H200 (< 9 min wall from a fresh checkout, wheels on PYTHONPATH):
#   PEPSI + Diet-PEPSI (paper-size generators, 256x256 crops of real photographs, held-out photographs; vs OpenCV Telea / Navier-Stokes and mean fill)
#   bash benchmarks/results_pepsi_h200.sh              -> benchmarks/results/issue16/pepsi/{results.md,results.json,inpainted_vs_opencv.png,run.log}
#   TINY=1 bash benchmarks/results_pepsi_h200.sh       (a CPU smoke run of the same config: tests/test_results_*.py)
# Environment: PYTHON (default python), OUT (output folder), TINY=1, LIMIT_S (timeout, default 540).
set -euo pipefail
cd "$(dirname "$0")/.."
export NO_ALBUMENTATIONS_UPDATE=1 HF_HUB_OFFLINE=1 SHAREZOO_OFFLINE=1 PYTHONUNBUFFERED=1
PY=${PYTHON:-python}
OUT=${OUT:-benchmarks/results/issue16/pepsi}
mkdir -p "$OUT"
args=(--config configs/pepsi/results.yaml --out "$OUT")
if [[ "${TINY:-0}" == 1 ]]; then args+=(--tiny); fi
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || echo "no GPU"; } | tee "$OUT/run.log"
start=$(date +%s)
OMP_NUM_THREADS=${OMP_NUM_THREADS:-4} timeout ${LIMIT_S:-540} "$PY" -m tasks.results.pepsi "${args[@]}" 2>&1 | tee -a "$OUT/run.log"
rm -rf "$OUT"/*/checkpoints "$OUT"/stage*/checkpoints  # weights stay on the machine; the tables and figures come back
echo "wall $(( $(date +%s) - start )) s" | tee -a "$OUT/run.log"
