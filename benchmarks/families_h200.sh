#!/usr/bin/env bash
# Eager vs torch.compile on one H200 for PEPSI / Diet-PEPSI (issue 5) and Dens3R ViT-L (issue 6), plus Dens3R
# training steps through the harness (issue 3). Every command appends its rows as it goes and runs under `timeout`,
# so the whole script ends inside one 10-minute device command.
#   benchmarks/families_h200.sh [OUT_DIR]      (default benchmarks/results)
set -uo pipefail
export PYTHONUNBUFFERED=1 NO_ALBUMENTATIONS_UPDATE=1 HF_HUB_OFFLINE=1
D=${1:-benchmarks/results}
export SHAREZOO_BENCH_RESULTS=$D
timeout 170 python3 benchmarks/bench_pepsi.py --modes eager,compile --iters 50 --warmup 5 --out "$D/pepsi.jsonl"
timeout 200 python3 benchmarks/bench_dens3r.py --modes eager compile --sizes 512 1024 --warmup 3 --iters 15 \
  --scenes 0 --out "$D/dens3r.jsonl"
B=(python3 -m tasks.cli bench --model dens3r_vitl16 --config configs/dens3r_vitl16/stage1.yaml --name dens3r
   --task train --batch 4 --precision bf16-mixed --steps 10)
timeout 80 "${B[@]}" --compile off --warmup 3
timeout 130 "${B[@]}" --compile default --warmup 4
