#!/usr/bin/env bash
# FusionReID (paper config: R50 + ViT-B/16 stride 12, 256x128, 751 classes, random init) on one GPU, ours vs the
# official code side by side in the same process (issue 3). Results append to $SHAREZOO_BENCH_RESULTS/fusionreid.jsonl.
#   benchmarks/fetch_upstream.sh FusionReID        # the official code, into the git-ignored .upstream/
#   benchmarks/fusionreid_h200.sh step|infer|loop|cudagraphs|autotune  # (the device tool: carry .whl and .upstream)
set -euo pipefail
export NO_ALBUMENTATIONS_UPDATE=1 HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
export SHAREZOO_BENCH_RESULTS=${SHAREZOO_BENCH_RESULTS:-benchmarks/results}
CFG=configs/fusionreid/market1501.yaml
REF=benchmarks/reference/fusionreid_official.py
# synthetic batches need no dataset: give the data-linked sizes (Market-1501: 751 ids, 6 cameras) explicitly
MK='model_kwargs={num_classes: 751, num_cameras: 6, pretrained_backbone: false}'
B=(python3 -m tasks.cli bench --model fusionreid_vitb16_r50 --config "$CFG" --name fusionreid --task-arg "$MK")
case "${1:-step}" in
step)  # one optimiser step on synthetic on-device batches (batch 128 = 8 x 16)
  "${B[@]}" --task train --batch 128 --precision bf16-mixed --compile off --steps 30 --warmup 10 --reference "$REF"
  "${B[@]}" --task train --batch 128 --precision bf16-mixed --compile off --task-arg channels_last=true --steps 30 --warmup 10
  "${B[@]}" --task train --batch 128 --precision bf16-mixed --compile default --task-arg channels_last=true --steps 30 --warmup 15
  "${B[@]}" --task train --batch 128 --precision bf16-mixed --compile reduce-overhead --task-arg channels_last=true --steps 30 --warmup 15
  ;;
graphs)  # CUDA graphs (torch.compile mode reduce-overhead): the compiled step is launch-bound (see the profile)
  "${B[@]}" --task train --batch 128 --precision bf16-mixed --compile reduce-overhead --task-arg channels_last=true --steps 30 --warmup 15
  "${B[@]}" --task infer --batch 256 --precision bf16-mixed --compile reduce-overhead --task-arg channels_last=true --steps 30 --warmup 15 --reference "$REF"
  ;;
infer)  # test-time embedding, batch 256 (official: fp16)
  "${B[@]}" --task infer --batch 256 --precision bf16-mixed --compile off --steps 30 --warmup 10 --reference "$REF"
  "${B[@]}" --task infer --batch 256 --precision bf16-mixed --compile default --task-arg channels_last=true --steps 30 --warmup 15
  "${B[@]}" --task infer --batch 256 --precision bf16-mixed --compile reduce-overhead --task-arg channels_last=true --steps 30 --warmup 15
  ;;
diag)  # why compile=reduce-overhead did not engage CUDA graphs (perf hints), and where inference GPU time goes
  OUTD=${SHAREZOO_BENCH_RESULTS}
  TORCH_LOGS=perf_hints timeout 100 "${B[@]}" --name diag --task infer --batch 256 --precision bf16-mixed \
    --compile reduce-overhead --task-arg channels_last=true --steps 5 --warmup 5 || true
  TORCH_LOGS=perf_hints timeout 120 "${B[@]}" --name diag --task train --batch 128 --precision bf16-mixed \
    --compile reduce-overhead --task-arg channels_last=true --steps 5 --warmup 5 || true
  timeout 100 python3 benchmarks/profile_step.py --config "$CFG" --task infer --batch 256 --task-arg "$MK" \
    --task-arg channels_last=true --compile default --rows 40 --out "$OUTD/fusionreid_profile_infer.txt" || true
  ;;
cudagraphs)  # our whole-step CUDA graphs (ReIDTask cuda_graphs=true): forward + backward + fused SGD in one graph,
  # eval forward in another; compile default inside. A cold compile of the training step takes ~2.5 min (H200, 16
  # cores); the fit line then reuses inductor's cache. Each line is capped by timeout; the case takes ~6-7 minutes.
  G=(--precision bf16-mixed --compile default --task-arg channels_last=true --task-arg cuda_graphs=true)
  # SKIP_STEP=1: the loop and inference only (the fit line then compiles cold: about 3 minutes more)
  [ -n "${SKIP_STEP:-}" ] || timeout 200 "${B[@]}" --task train --batch 128 "${G[@]}" --steps 20 --warmup 5 \
    || echo "cudagraphs train: rc $?"
  [ -d /tmp/reid/market1501 ] || python3 -c "from datamodules.synthetic import write_reid_dataset as w; w('/tmp/reid', 'market1501', num_train_ids=751, num_test_ids=20, train_images_per_id=17)"
  timeout "${FIT_TIMEOUT:-150}" "${B[@]}" --task fit --batch 128 "${G[@]}" --data-arg root=/tmp/reid \
    --data-arg num_workers="${WORKERS:-14}" --steps 30 --warmup 8 --reference "$REF" || echo "cudagraphs fit: rc $?"
  timeout 140 "${B[@]}" --task infer --batch 256 "${G[@]}" --steps 20 --warmup 4 --reference "$REF" \
    || echo "cudagraphs infer: rc $?"
  ;;
autotune)  # inference with inductor's GEMM/conv autotuning but no inductor CUDA graphs, then under our graphs
  timeout 300 "${B[@]}" --task infer --batch 256 --precision bf16-mixed --compile max-autotune-no-cudagraphs \
    --task-arg channels_last=true --steps 20 --warmup 4 || echo "autotune infer: rc $?"
  timeout 300 "${B[@]}" --task infer --batch 256 --precision bf16-mixed --compile max-autotune-no-cudagraphs \
    --task-arg channels_last=true --task-arg cuda_graphs=true --steps 20 --warmup 4 || echo "autotune infer graphs: rc $?"
  ;;
loop)  # the real training loop end to end: Market-1501-layout JPEGs (synthetic, full size) through the datamodule
  python3 -c "from datamodules.synthetic import write_reid_dataset as w; w('/tmp/reid', 'market1501', num_train_ids=751, num_test_ids=20, train_images_per_id=17)"
  "${B[@]}" --task fit --batch 128 --precision bf16-mixed --compile "${COMPILE:-reduce-overhead}" --task-arg channels_last=true \
    --data-arg root=/tmp/reid --data-arg num_workers="${WORKERS:-14}" --steps 60 --warmup 20 \
    --data "$CFG" --data-batches 60 --reference "$REF"
  ;;
esac
