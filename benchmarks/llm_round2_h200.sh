#!/usr/bin/env bash
# Issue 23 on one H200 (~5 min; +1 min to train the tiny reference LM on first use): SuffixDecoding on repeated CPython-file edits, the codable watermarks on the
# reference LM, EPD vs aggregated serving under a request stream (all stages on the one GPU: no memory isolation).
#   benchmarks/llm_round2_h200.sh [OUT_DIR] [MODEL_FOLDER]
# OUT_DIR defaults to benchmarks/results; MODEL_FOLDER (an HF causal-LM folder with sharezoo_tokenizer.json, e.g.
# runs/issue22/reference_lm_base from benchmarks/reference_lm_h200.sh) defaults to the tiny reference LM, trained on
# the box's CPU on first use (~1 min).
set -uo pipefail
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 OMP_NUM_THREADS=8
D=${1:-benchmarks/results}
M=${2:-}
PY=${PYTHON:-python3}
mkdir -p "$D"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
if [ -z "$M" ]; then M=$($PY -c "from tasks.llm.reference_lm_train import cached_reference_lm as c; print(c('tiny'))" | tail -1); fi
timeout 130 $PY benchmarks/bench_suffix_decoding.py --model "$M" --files 4 --edits 4 --methods plain,suffix,suffix_chain \
  --out "$D/suffix_decoding.jsonl"
timeout 100 $PY -m tasks.llm.watermark_eval --model "$M" --device cuda --prompts 24 --out "$D/watermark_h200"
timeout 70 $PY benchmarks/bench_epd.py --requests 24 --rate 8 --out "$D/epd.jsonl"
