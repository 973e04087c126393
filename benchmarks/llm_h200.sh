#!/usr/bin/env bash
# The LLM-side benchmarks on one GPU (issue 7): Prefix Grouper at S = 1k, APE prefill, BatchLLM generation.
# Each script keeps to its --time-budget (later points are skipped and say so); results append to $OUT_DIR.
#   benchmarks/llm_h200.sh [OUT_DIR]      (default benchmarks/results)
set -uo pipefail
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
D=${1:-benchmarks/results}
timeout 160 python3 benchmarks/bench_prefix_grouper.py --P 1024,4096,16384 --S 1024 --G 4,16 --probe-G 32 \
  --time-budget 130 --out "$D/prefix_grouper.jsonl"
timeout 75 python3 benchmarks/bench_ape.py --time-budget 50 --out "$D/ape.jsonl"
timeout 75 python3 benchmarks/bench_batchllm.py --time-budget 50 --out "$D/batchllm.jsonl"
