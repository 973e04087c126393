#!/usr/bin/env bash
# Issue 22 on one H200: train the base reference LM (~110M params, 2k context, CPython stdlib text, GPT-2 BPE), then
# run the KV-cache method grid on it (quality vs memory vs speed, beside the full cache and StreamingLLM eviction).
# Each step fits the 10-min device limit; run them as separate commands:
#   benchmarks/reference_lm_h200.sh train [RUN_DIR]   # -> RUN_DIR/reference_lm_base (HF folder + train_log.json)
#   benchmarks/reference_lm_h200.sh grid  [RUN_DIR]   # -> RUN_DIR/kv_eval_base/results.{csv,md,json} + plot
# RUN_DIR defaults to runs/issue22. The corpus is the running Python's stdlib (its version and every file's hash are
# in RUN_DIR/reference_lm_base/stdlib_manifest.json); evaluate with the same Python that trained.
set -euo pipefail
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 OMP_NUM_THREADS=8
STEP=${1:-train}
RUN=${2:-runs/issue22}
PY=${PYTHON:-python3}
mkdir -p "$RUN"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
$PY -c "import sys, torch, transformers; print(sys.version, torch.__version__, transformers.__version__)"
case "$STEP" in
  train)
    timeout 570 $PY -m tasks.llm.reference_lm_train --size base --out "$RUN/reference_lm_base" --compile \
      --val-batches 50 2>&1 | tee "$RUN/train.log" ;;
  grid)
    timeout 570 $PY -m tasks.llm.kv_eval --config configs/kv_cache/grid_base.yaml --model "$RUN/reference_lm_base" \
      --out "$RUN/kv_eval_base" --device cuda 2>&1 | tee "$RUN/grid.log" ;;
  *) echo "usage: $0 train|grid [RUN_DIR]"; exit 2 ;;
esac
