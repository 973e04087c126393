#!/usr/bin/env bash
# Issue 24 item 4 on one H200: where FusionReID's compiled + whole-step-CUDA-graph training drifts from compiled
# training (tests/test_reid_cuda_graphs.py's xfail). fusionreid_tiny at the test's sizes (batch 16 = 4 ids x 4 images,
# 64x32, lr 0.02, 12 steps, the lr halved by a float before step 6, an eval-mode embedding before step 6), runs from
# one state (eager, eager2, graphed, compiled, compiled2, compiled_nocache, compiled_graphlike, compiled_graphed; see
# benchmarks/reid_graph_drift.py). Each case writes <OUT_DIR>/<case>/{steps.jsonl,summary.json,log.txt}.
#
#   benchmarks/reid_graph_drift_h200.sh all [OUT_DIR]   the three cases below, one device call (<= 5 min)
#   benchmarks/reid_graph_drift_h200.sh tiny [OUT_DIR]  the code path on the CPU (no graphs; the test suite's check)
#
# Cases (bf16, each capped by `timeout`; the JSON lines are written step by step, so a cut case still reports):
#   sequential   the GPU test's order, each run to the end before the next: compiled_graphed (its eval before step 6
#                at batch 16, as the test's two validation batches of 16), compiled, compiled2, compiled_nocache,
#                compiled_graphlike; TORCH_LOGS=recompiles names every recompilation and why (the autocast cache
#                flag) and the run lines count them. compiled_graphed~compiled_graphlike: the graph alone (same
#                compiled code, same tensor lr); compiled_graphlike~compiled: all the graph path changes but the
#                graph (its own compilation, the lr as an fp32 tensor); compiled2~compiled: the test's noise
#   resync_det   lock-step, deterministic kernels (no SIE atomics, math SDPA, inductor deterministic), lr a tensor in
#                every run, every run re-synchronised to `eager` after each step: one step's difference per step,
#                no chaos; compiled_graphed~compiled_nocache is then ~0 at every step if the captured step is exact
#   free         lock-step as the GPU test runs (SIE on, default kernels, no re-sync): which tensor leaves the noise
set -uo pipefail
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 NO_ALBUMENTATIONS_UPDATE=1 OMP_NUM_THREADS=${OMP_NUM_THREADS:-4}
cd "$(dirname "$0")/.."
D=${2:-benchmarks/results/reid_graph_drift}
PY=${PYTHON:-python3}
R=("$PY" benchmarks/reid_graph_drift.py --tiny --steps 12)
one() {  # one case: name, timeout, args...
  local name=$1 limit=$2; shift 2
  mkdir -p "$D/$name"
  echo "=== $name: ${R[*]} $* --out $D/$name"
  timeout "$limit" "${R[@]}" "$@" --out "$D/$name" 2>&1 | grep -v -e "UserWarning" -e "warnings.warn" \
    | tee "$D/$name/log.txt"
  echo "=== $name: rc ${PIPESTATUS[0]}"
}
case "${1:-all}" in
all)
  nvidia-smi --query-gpu=name,driver_version --format=csv,noheader || true
  TORCH_LOGS=recompiles one sequential 140 --precision bf16-mixed --order sequential \
    --runs compiled_graphed,compiled,compiled2,compiled_nocache,compiled_graphlike
  one resync_det 100 --precision bf16-mixed --resync --deterministic --tensor-lr
  one free 50 --precision bf16-mixed
  ;;
tiny)
  one cpu_tiny 300 --device cpu --precision 32-true --steps 2 --runs eager,eager2 --eval-at 1 --lr-change-at 1
  ;;
*) echo "usage: $0 all|tiny [OUT_DIR]"; exit 2 ;;
esac
