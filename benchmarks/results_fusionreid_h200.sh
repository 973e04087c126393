#!/usr/bin/env bash
# Issue 16 results recipe on one H200 (< 9 min wall from a fresh checkout, wheels on PYTHONPATH):
#   FusionReID (fused vs CNN-alone / ViT-alone / timm ResNet-50 / timm ViT-S / raw pixels, photo-patch ReID)
#   bash benchmarks/results_fusionreid_h200.sh              -> benchmarks/results/issue16/fusionreid/{results.md,results.json,*.png,run.log}
#   TINY=1 bash benchmarks/results_fusionreid_h200.sh       (seconds on a CPU: the smoke test in tests/test_results_*.py)
# Environment: PYTHON (default python), OUT (output folder), DATA_ROOT, TINY=1, MODELS (comma-separated subset),
# LIMIT_S (timeout, default 540).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
OUT=${OUT:-benchmarks/results/issue16/fusionreid}
mkdir -p "$OUT"
args=(--config configs/fusionreid/results.yaml --out "$OUT" --data_root "${DATA_ROOT:-runs/results/data}")
if [[ "${TINY:-0}" == 1 ]]; then args+=(--tiny); fi
if [[ -n "${MODELS:-}" ]]; then args+=(--models "$MODELS"); fi
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || echo "no GPU"; } | tee "$OUT/run.log"
start=$(date +%s)
OMP_NUM_THREADS=${OMP_NUM_THREADS:-4} timeout ${LIMIT_S:-540} "$PY" -m tasks.results.fusionreid "${args[@]}" 2>&1 | tee -a "$OUT/run.log"
echo "wall $(( $(date +%s) - start )) s" | tee -a "$OUT/run.log"
