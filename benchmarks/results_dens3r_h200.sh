#!/usr/bin/env bash
# Issue 16 results recipe on one H200 (< 9 min wall from a fresh checkout, wheels on PYTHONPATH):
#   Dens3R (stage 1 vs median-depth constants and OpenCV SIFT/ORB + essential-matrix pose; held-out scenes + the real Middlebury pair)
#   bash benchmarks/results_dens3r_h200.sh              -> benchmarks/results/issue16/dens3r/{results.md,results.json,*.png,run.log}
#   TINY=1 bash benchmarks/results_dens3r_h200.sh       (seconds on a CPU: the smoke test in tests/test_results_*.py)
# Environment: PYTHON (default python), OUT (output folder), TINY=1, LIMIT_S (timeout, default 540).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
OUT=${OUT:-benchmarks/results/issue16/dens3r}
mkdir -p "$OUT"
args=(--config configs/dens3r/results.yaml --out "$OUT" )
if [[ "${TINY:-0}" == 1 ]]; then args+=(--tiny); fi
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || echo "no GPU"; } | tee "$OUT/run.log"
start=$(date +%s)
OMP_NUM_THREADS=${OMP_NUM_THREADS:-4} timeout ${LIMIT_S:-540} "$PY" -m tasks.results.dens3r "${args[@]}" 2>&1 | tee -a "$OUT/run.log"
echo "wall $(( $(date +%s) - start )) s" | tee -a "$OUT/run.log"
