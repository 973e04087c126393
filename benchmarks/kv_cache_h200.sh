#!/usr/bin/env bash
# Issue 22: the KV-cache grid on the base reference LM, split into parts that each fit the 10-min device limit.
# Train the LM first (benchmarks/reference_lm_h200.sh train RUN_DIR), then, in the same warm machine:
#   benchmarks/kv_cache_h200.sh PART [RUN_DIR]     # PART: quant | svd | merge | cachegen
# or everything in ONE call (train the base LM in a 240-s budget, then configs/kv_cache/grid_base_quick.yaml, CacheGen as its receiver):
#   benchmarks/kv_cache_h200.sh onecall [RUN_DIR]  # -> RUN_DIR/reference_lm_base + RUN_DIR/kv_eval_base/quick/
# -> RUN_DIR/kv_eval_base/PART/results.{csv,md,json} + plot (each part re-runs the full cache as its reference).
# CacheGen needs `constriction` (carry its cp312 wheel where the device image lacks it; README of the device tool).
set -euo pipefail
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 OMP_NUM_THREADS=8
PART=${1:?usage: $0 quant|svd|merge|cachegen|onecall [RUN_DIR]}
RUN=${2:-runs/issue22}
PY=${PYTHON:-python3}
if [ "$PART" = onecall ]; then
  mkdir -p "$RUN/kv_eval_base/quick"
  nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
  [ -f "$RUN/reference_lm_base/config.json" ] || timeout 330 $PY -m tasks.llm.reference_lm_train --size base \
    --out "$RUN/reference_lm_base" --compile --val-batches 50 --time-budget-s 240 2>&1 | tee "$RUN/train.log"
  timeout 255 $PY -m tasks.llm.kv_eval --config configs/kv_cache/grid_base_quick.yaml --model "$RUN/reference_lm_base" \
    --out "$RUN/kv_eval_base/quick" --device cuda 2>&1 | tee "$RUN/kv_eval_base/quick/grid.log"
  exit
fi
case "$PART" in
  quant)    ONLY=gear_2bit,gear_l_2bit,gear_4bit,kivi_2bit,streamingllm_4_508 ;;
  svd)      ONLY=xkv_g4,xkv_g2,single_svd,minicache,minicache_4bit ;;
  merge)    ONLY=kvmerger_50,kvmerger_35,ems_256,ems_512,chelsea_50,chelsea_75 ;;
  cachegen) ONLY=cachegen_l1 ;;
  *) echo "usage: $0 quant|svd|merge|cachegen|onecall [RUN_DIR]"; exit 2 ;;
esac
mkdir -p "$RUN/kv_eval_base/$PART"
timeout 570 $PY -m tasks.llm.kv_eval --config configs/kv_cache/grid_base.yaml --model "$RUN/reference_lm_base" \
  --only "$ONLY" --out "$RUN/kv_eval_base/$PART" --device cuda 2>&1 | tee "$RUN/kv_eval_base/$PART/grid.log"
