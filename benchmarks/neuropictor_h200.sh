#!/usr/bin/env bash
# NeuroPictor at paper size on one H200 (issue 17): bf16 fine-tuning step at batch 16 / 512 px and DDIM 50-step CFG-5.0
# sampling, eager vs torch.compile (benchmarks/bench_neuropictor.py; random weights). Each case appends its rows to
# $D/neuropictor.jsonl as it goes and runs under `timeout`, so each fits one 10-minute device command.
#   benchmarks/neuropictor_h200.sh train [OUT_DIR]    eager then compiled training step (cold compile of fwd+bwd)
#   benchmarks/neuropictor_h200.sh sample [OUT_DIR]   eager then compiled (UNet + ControlNet) sampling, 4 images
#   benchmarks/neuropictor_h200.sh all [OUT_DIR]      both (only when a warm inductor cache makes it fit)
#   benchmarks/neuropictor_h200.sh official [OUT_DIR] side by side: our eager step, then the official code's step
#     (benchmarks/neuropictor_official.py: their CLDM_for_FMRI from their models/finetune.yaml, random init, bf16,
#     batch 16, 512 px) as configured (xformers branch on torch SDPA, gradient checkpointing on), then without its
#     gradient checkpointing, then with its no-xformers fp32-attention fallback (≤ 9 min in all).
#     Needs `benchmarks/fetch_upstream.sh neuropictor` (-> .upstream/neuropictor) and the wheels of their pins in
#     .whl/official/ (open_clip_torch 2.23.0, omegaconf 2.3.0, antlr4-python3-runtime 4.9.3, timm 0.6.13); carry
#     .whl and .upstream/neuropictor. Their pins go to their own /tmp/site_official, first on their sys.path only.
#     What the official repository lacks (fMRI-encoder yaml + weights, Lightning 1.5's rank_zero_only import path,
#     lpips for validation) and what stands in for it: the docstring of neuropictor_official.py.
set -uo pipefail
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
D=${2:-benchmarks/results}
B=(python3 benchmarks/bench_neuropictor.py --out "$D/neuropictor.jsonl")
train() {
  timeout 150 "${B[@]}" --benches train --modes eager --steps 20 --warmup 3 || echo "train eager: rc $?"
  timeout 400 "${B[@]}" --benches train --modes compile --steps 20 --warmup 3 || echo "train compile: rc $?"
}
official() {
  timeout 150 "${B[@]}" --benches train --modes eager --steps 20 --warmup 3 || echo "train eager: rc $?"
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site_official \
    .whl/official/*.whl || { echo "official: wheels missing from .whl/official"; return 1; }
  O=(python3 benchmarks/neuropictor_official.py --site /tmp/site_official --out "$D/neuropictor.jsonl")
  timeout 150 "${O[@]}" --attention xformers-sdpa --steps 20 --warmup 3 || echo "official xformers-sdpa: rc $?"
  timeout 110 "${O[@]}" --attention xformers-sdpa --no-checkpointing --steps 10 --warmup 2 ||
    echo "official no-checkpointing: rc $?"
  timeout 110 "${O[@]}" --attention vanilla --steps 10 --warmup 2 || echo "official vanilla: rc $?"
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
*) echo "usage: $0 train|sample|all|official [OUT_DIR]" >&2; exit 2 ;;
esac
