#!/usr/bin/env bash
# Scale-out from 1 to 2 GPUs (issue 8): FusionReID at paper size (bf16) and the GRPO task, through the real training
# loop of `sharezoo bench --task fit` (Lightning's DDP / FSDP strategies; loader, forward, backward, optimiser).
#
# NEEDS the device tool's `nvidia-h200-x2` kind (2 H200 GPUs of one host) and NCCL with NVLink multicast OFF:
# NCCL_NVLS_ENABLE=0 (and PyTorch symmetric-memory / NVSHMEM multicast off), exported below; see the device tool's
# KINDS.md: multicast can put the host's shared GPUs out of service. Keep these set if you start anything else.
# NEEDS `sharezoo bench --devices N --strategy S --sync-batchnorm` (tasks/bench.py time_fit_loop: every rank times its
# own batches, rank 0 writes one record with the summed samples/s and the peak memory of every GPU).
#
# Weak scaling: the batch size is per device (as in the configs), so 2 GPUs train on twice the samples per step.
#   throughput ratio = samples/s (2 GPUs) / samples/s (1 GPU); scaling efficiency = ratio / 2;
#   step time = loop_step_ms_mean; memory = loop_peak_mem_gib_per_device.
# Records append to $SHAREZOO_BENCH_RESULTS/scaling_h200x2.jsonl; `summary` prints the ratios. Each case fits in one
# 10-minute device command:
#   benchmarks/scaling_h200x2.sh reid      # FusionReID R50+ViT-B/16, 256x128, batch 128 (8 ids x 16) per GPU
#   benchmarks/scaling_h200x2.sh grpo      # GRPO, Qwen2-0.5B-shaped policy (random init), 16 prompts x G=8 per GPU
#   benchmarks/scaling_h200x2.sh summary
set -uo pipefail
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
export PYTHONUNBUFFERED=1 NO_ALBUMENTATIONS_UPDATE=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
export SHAREZOO_BENCH_RESULTS=${SHAREZOO_BENCH_RESULTS:-benchmarks/results}
export SHAREZOO_GIT_COMMIT=${SHAREZOO_GIT_COMMIT:-$(git rev-parse HEAD 2>/dev/null || echo unknown)}
NAME=scaling_h200x2
MODE=${1:-summary}

if [ "$MODE" != summary ]; then
  python3 -c "import torch, sys; n = torch.cuda.device_count(); sys.exit(0 if n >= 2 else f'needs 2 GPUs, found {n}')" \
    || exit 2
  python3 -m tasks.cli bench --help | grep -q -- '--devices' \
    || { echo "sharezoo bench has no --devices/--strategy (tasks/bench.py time_fit_loop passthrough)"; exit 2; }
fi

case "$MODE" in
reid)
  # paper config, random init (offline), synthetic Market-1501-layout JPEGs at full size (751 ids x 17 images)
  CFG=configs/fusionreid/market1501.yaml
  [ -d /tmp/reid/market1501 ] || python3 -c "from datamodules.synthetic import write_reid_dataset as w; \
w('/tmp/reid', 'market1501', num_train_ids=751, num_test_ids=20, train_images_per_id=17)"
  B=(python3 -m tasks.cli bench --model fusionreid_vitb16_r50 --config "$CFG" --name "$NAME" --task fit
     --precision bf16-mixed --compile "${COMPILE:-default}" --task-arg channels_last=true
     --task-arg 'model_kwargs={pretrained_backbone: false}' --data-arg root=/tmp/reid
     --data-arg batch_size=128 --data-arg num_instances=16 --data-arg num_workers="${WORKERS:-14}"
     --batch 128 --steps 40 --warmup 15)
  timeout 170 "${B[@]}" --devices 1 || echo "reid 1 GPU: rc $?"
  timeout 190 "${B[@]}" --devices 2 --strategy ddp || echo "reid 2 GPUs ddp: rc $?"
  timeout 190 "${B[@]}" --devices 2 --strategy ddp --sync-batchnorm || echo "reid 2 GPUs ddp+syncbn: rc $?"
  ;;
grpo)
  # the toy arithmetic prompts (char tokenizer, vocab 48) with a policy of Qwen2-0.5B's shape; no warm start, so
  # every timed step is a GRPO step: KV-cached sampling of 16 x 8 completions (to 32 tokens), rewards, one update
  CFG=configs/grpo/toy_arithmetic.yaml
  POLICY='model={family: qwen2, hidden_size: 896, intermediate_size: 4864, num_hidden_layers: 24,
    num_attention_heads: 14, num_key_value_heads: 2}'
  B=(python3 -m tasks.cli bench --config "$CFG" --name "$NAME" --task fit --precision bf16-mixed
     --task-arg "$POLICY" --task-arg vocab_size=48 --task-arg sft_warmup_steps=0 --task-arg group_size=8
     --task-arg max_new_tokens=32 --task-arg lr=1.0e-5 --data-arg batch_size=16 --batch 16 --steps 20 --warmup 5)
  timeout 170 "${B[@]}" --devices 1 || echo "grpo 1 GPU: rc $?"
  timeout 190 "${B[@]}" --devices 2 --strategy ddp || echo "grpo 2 GPUs ddp: rc $?"
  timeout 200 "${B[@]}" --devices 2 --strategy fsdp || echo "grpo 2 GPUs fsdp: rc $?"
  ;;
summary)
  python3 - "$SHAREZOO_BENCH_RESULTS/$NAME.jsonl" <<'EOF'
import json, sys
rows = [json.loads(line) for line in open(sys.argv[1]) if line.strip()]
base = {}
for r in rows:
    if r.get("devices", 1) == 1:
        base[r["model"]] = r  # the latest one-GPU record of each model
print(f"{'model':24} {'GPUs':>4} {'strategy':10} {'syncBN':>6} {'samples/s':>10} {'step ms':>8} {'ratio':>6} "
      f"{'eff.':>6}  peak GiB per GPU")
for r in rows:
    one = base.get(r["model"])
    ratio = r["samples_per_s"] / one["samples_per_s"] if one and r["samples_per_s"] else float("nan")
    peaks = " ".join(f"{p:.1f}" for p in r.get("loop_peak_mem_gib_per_device") or [] if p is not None)
    print(f"{r['model']:24} {r.get('devices', 1):>4} {r.get('strategy', 'auto'):10} "
          f"{str(r.get('sync_batchnorm', False)):>6} {r['samples_per_s']:>10.1f} {r['loop_step_ms_mean']:>8.1f} "
          f"{ratio:>6.2f} {ratio / r.get('devices', 1):>6.2f}  {peaks}")
EOF
  ;;
*)
  echo "usage: $0 reid|grpo|summary"; exit 2
  ;;
esac
