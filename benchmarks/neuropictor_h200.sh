#!/usr/bin/env bash
# NeuroPictor at paper size on one H200 (issue 17): bf16 fine-tuning step at batch 16 / 512 px and DDIM 50-step CFG-5.0
# sampling, eager vs torch.compile (benchmarks/bench_neuropictor.py; random weights). Each case appends its rows to
# $D/neuropictor.jsonl as it goes and runs under `timeout`, so each fits one 10-minute device command.
#   benchmarks/neuropictor_h200.sh train [OUT_DIR]    eager then compiled training step (cold compile of fwd+bwd)
#   benchmarks/neuropictor_h200.sh sample [OUT_DIR]   eager then compiled (UNet + ControlNet) sampling, 4 images
#   benchmarks/neuropictor_h200.sh all [OUT_DIR]      both (only when a warm inductor cache makes it fit)
#   benchmarks/neuropictor_h200.sh official [OUT_DIR] side by side in one call (≤ 9.5 min): the official code's step
#     (benchmarks/neuropictor_official.py: their CLDM_for_FMRI from their models/finetune.yaml, random init, bf16,
#     batch 16, 512 px) as configured (xformers branch on torch SDPA, gradient checkpointing on), then without its
#     gradient checkpointing, then our fastest exact step: compile_cl (whole forward + backward compiled, the frozen
#     VAE encoder compiled too, UNet / ControlNet / VAE channels-last, fused AdamW; cold compile ~5 min).
#     Then, only while the 570-s budget (NEUROPICTOR_BUDGET_S) leaves room: our eager_cl step (~80 s), and with
#     OFFICIAL_VANILLA=1 their no-xformers fp32-attention fallback (~45 s).
#     Needs `benchmarks/fetch_upstream.sh neuropictor` (-> .upstream/neuropictor) and the wheels of their pins in
#     .whl/official/ (open_clip_torch 2.23.0, omegaconf 2.3.0, antlr4-python3-runtime 4.9.3, timm 0.6.13); carry
#     .whl and .upstream/neuropictor. Their pins go to their own /tmp/site_official, first on their sys.path only.
#     What the official repository lacks (fMRI-encoder yaml + weights, Lightning 1.5's rank_zero_only import path,
#     lpips for validation) and what stands in for it: the docstring of neuropictor_official.py.
#   benchmarks/neuropictor_h200.sh ablation [OUT_DIR] our eager step with and without channels-last (one process:
#     cuDNN's autotuning shared), then regional_cl (the repeated blocks compiled in place, channels-last): ≤ 9.5 min
set -uo pipefail
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
D=${2:-benchmarks/results}
B=(python3 benchmarks/bench_neuropictor.py --out "$D/neuropictor.jsonl")
BUDGET=${NEUROPICTOR_BUDGET_S:-570}  # seconds one call may take in all (the device's limit is 600 a command)
left() { echo $((BUDGET - SECONDS)); }
# extra RUN_NAME SECONDS_NEEDED CMD...: run CMD under the time still left, only if at least SECONDS_NEEDED are left
extra() {
  local name=$1 need=$2
  shift 2
  if (($(left) < need)); then echo "$name: skipped ($(left) s left, needs ~$need)"; return 0; fi
  timeout $(($(left) - 5)) "$@" || echo "$name: rc $?"
}
train() {
  timeout 150 "${B[@]}" --benches train --modes eager --steps 20 --warmup 3 || echo "train eager: rc $?"
  timeout 400 "${B[@]}" --benches train --modes compile --steps 20 --warmup 3 || echo "train compile: rc $?"
}
official() {
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site_official \
    .whl/official/*.whl || { echo "official: wheels missing from .whl/official"; return 1; }
  O=(python3 benchmarks/neuropictor_official.py --site /tmp/site_official --out "$D/neuropictor.jsonl")
  timeout 85 "${O[@]}" --attention xformers-sdpa --steps 20 --warmup 3 || echo "official xformers-sdpa: rc $?"
  timeout 75 "${O[@]}" --attention xformers-sdpa --no-checkpointing --steps 10 --warmup 2 ||
    echo "official no-checkpointing: rc $?"
  timeout 395 "${B[@]}" --benches train --modes compile_cl --steps 20 --warmup 3 || echo "train compile_cl: rc $?"
  # with the time left (or if the compile failed early): our eager channels-last step, then their fp32 attention
  extra "train eager_cl" 80 "${B[@]}" --benches train --modes eager_cl --steps 10 --warmup 2
  [ "${OFFICIAL_VANILLA:-0}" = 1 ] && extra "official vanilla" 45 "${O[@]}" --attention vanilla --steps 10 --warmup 2
  return 0
}
ablation() {
  timeout 170 "${B[@]}" --benches train --modes eager,eager_cl --steps 20 --warmup 3 || echo "train eager(_cl): rc $?"
  extra "train regional_cl" 200 "${B[@]}" --benches train --modes regional_cl --steps 20 --warmup 3
}
sample() {
  timeout 120 "${B[@]}" --benches sample --modes eager --sample-iters 3 || echo "sample eager: rc $?"
  timeout 300 "${B[@]}" --benches sample --modes compile --sample-iters 3 || echo "sample compile: rc $?"
}
case "${1:-train}" in
train) train ;;
sample) sample ;;
all) train; sample ;;
official) official ;;
ablation) ablation ;;
*) echo "usage: $0 train|sample|all|official|ablation [OUT_DIR]" >&2; exit 2 ;;
esac
