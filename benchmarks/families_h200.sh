#!/usr/bin/env bash
# Eager vs torch.compile on one H200 for the families beside FusionReID (issue 3's per-family rows; PPGFlowECG's come
# from benchmarks/bench_ppgflowecg.py). Every command appends its rows as it goes and runs under `timeout`, so each
# case ends inside one 10-minute device command.
#   benchmarks/families_h200.sh infer [OUT_DIR]  PEPSI / Diet-PEPSI (issue 5) and Dens3R ViT-L (issue 6) latency
#   benchmarks/families_h200.sh train [OUT_DIR]  training steps through the harness (bf16): PEPSI, Diet-PEPSI (one
#                                                D + G iteration), Dens3R ViT-L, the ECG ResNet-1D classifier
#   benchmarks/families_h200.sh rest [OUT_DIR]   what `train` left unmeasured in its 470-s limit: Dens3R compiled
#                                                training (a cold compile of fwd+bwd takes > 140 s), the ECG
#                                                classifier's compiled inference; then PPGFlowECG stage 1 with fused
#                                                AdamW; at most 8.5 minutes (7.5 on 2026-11-29, commit 07c60c4)
#   benchmarks/families_h200.sh dens3r-compile [OUT_DIR]  Dens3R ViT-L training, compile='regional' (its blocks)
#                                                against the whole network, each from a cold cache: step time and
#                                                first_call_s / warmup_s (the compile); at most 7.5 minutes
set -uo pipefail
export PYTHONUNBUFFERED=1 NO_ALBUMENTATIONS_UPDATE=1 HF_HUB_OFFLINE=1
D=${2:-benchmarks/results}
export SHAREZOO_BENCH_RESULTS=$D
DENS3R=(python3 -m tasks.cli bench --model dens3r_vitl16 --config configs/dens3r/stage1.yaml --name dens3r
        --task train --batch 4 --precision bf16-mixed --steps 10)
ECG=(python3 -m tasks.cli bench --model ecg_resnet1d18 --config configs/ppgflowecg/mitbih_classifier_demo.yaml
     --name ppgflowecg --batch 256 --precision bf16-mixed --steps 30)
case "${1:-infer}" in
infer)
  timeout 170 python3 benchmarks/bench_pepsi.py --modes eager,compile --iters 50 --warmup 5 --out "$D/pepsi.jsonl"
  timeout 200 python3 benchmarks/bench_dens3r.py --modes eager compile --sizes 512 1024 --warmup 3 --iters 15 \
    --scenes 0 --out "$D/dens3r.jsonl"
  ;;
train)
  for m in pepsi diet_pepsi; do  # paper batch 8 at 256 px
    B=(python3 -m tasks.cli bench --model $m --config configs/pepsi/celebahq.yaml --name pepsi --task train --batch 8
       --precision bf16-mixed --steps 20)
    timeout 60 "${B[@]}" --compile off --warmup 3 || echo "$m train eager: rc $?"
    timeout 110 "${B[@]}" --compile default --warmup 4 || echo "$m train compile: rc $?"
  done
  timeout 70 "${DENS3R[@]}" --compile off --warmup 3 || echo "dens3r train eager: rc $?"
  timeout 140 "${DENS3R[@]}" --compile default --warmup 4 || echo "dens3r train compile: rc $?"
  for t in train infer; do
    timeout 40 "${ECG[@]}" --task $t --compile off --warmup 5 || echo "ecg_resnet1d18 $t eager: rc $?"
    timeout 70 "${ECG[@]}" --task $t --compile default --warmup 5 || echo "ecg_resnet1d18 $t compile: rc $?"
  done
  ;;
rest)
  timeout 280 "${DENS3R[@]}" --compile default --warmup 4 || echo "dens3r train compile: rc $?"
  timeout 60 "${ECG[@]}" --task infer --compile default --warmup 5 || echo "ecg_resnet1d18 infer compile: rc $?"
  timeout 180 python3 benchmarks/bench_ppgflowecg.py --modes compile-conv2d-bf16 --benches stage1 --time-budget 160 \
    --out "$D/ppgflowecg.jsonl" || echo "ppgflowecg stage 1: rc $?"
  ;;
dens3r-compile)
  timeout 150 "${DENS3R[@]}" --compile regional --warmup 4 || echo "dens3r train regional: rc $?"
  timeout 290 "${DENS3R[@]}" --compile default --warmup 4 || echo "dens3r train compile: rc $?"
  ;;
esac
