#!/usr/bin/env bash
# NeuroPictor at paper size on one H200 (issue 17): bf16 fine-tuning step at batch 16 / 512 px and DDIM 50-step CFG-5.0
# sampling, eager vs torch.compile (benchmarks/bench_neuropictor.py; random weights). Each case appends its rows to
# $D/neuropictor.jsonl as it goes and runs under `timeout`, so each fits one 10-minute device command.
#   benchmarks/neuropictor_h200.sh train [OUT_DIR]    eager then compiled training step (cold compile of fwd+bwd)
#   benchmarks/neuropictor_h200.sh sample [OUT_DIR]   eager then compiled (UNet + ControlNet) sampling, 4 images
#   benchmarks/neuropictor_h200.sh all [OUT_DIR]      both (only when a warm inductor cache makes it fit)
# The official code (jingyanghuo/neuropictor) is NOT run beside it: it needs pytorch-lightning 1.5's API
# (pytorch_lightning.utilities.distributed.rank_zero_only, gone in lightning 2.x), omegaconf, lpips, the
# fMRI-encoder config fMRI_AutoEncoder.yaml (Hugging Face only) and utils/utils.py (Config), which its repository
# lacks; the H200 image has lightning 2.x and none of the others.
set -uo pipefail
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
D=${2:-benchmarks/results}
B=(python3 benchmarks/bench_neuropictor.py --out "$D/neuropictor.jsonl")
train() {
  timeout 150 "${B[@]}" --benches train --modes eager --steps 20 --warmup 3 || echo "train eager: rc $?"
  timeout 400 "${B[@]}" --benches train --modes compile --steps 20 --warmup 3 || echo "train compile: rc $?"
}
sample() {
  timeout 120 "${B[@]}" --benches sample --modes eager --sample-iters 3 || echo "sample eager: rc $?"
  timeout 300 "${B[@]}" --benches sample --modes compile --sample-iters 3 || echo "sample compile: rc $?"
}
case "${1:-train}" in
train) train ;;
sample) sample ;;
all) train; sample ;;
*) echo "usage: $0 train|sample|all [OUT_DIR]" >&2; exit 2 ;;
esac
