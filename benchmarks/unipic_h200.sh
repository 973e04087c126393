#!/usr/bin/env bash
# UniPic on one H200 (<= 9 min): (1) 1024^2 generation time + peak memory of unipic_1p5b (random init, bf16, 64 MaskGIT
# steps, CFG 3, 100 DiffLoss steps per token; the paper claims < 15 GB), (2) per-stage training step of unipic_1p5b
# (stage1_pt: LLM frozen; stage3_ct: everything trained), eager vs compiled, (3) the LLM-bridge vs MAR-only comparison
# on the SYNTHETIC scene set with a wider small model (MAR 4+4 x 256, 4-layer LLM 256) for the same steps, (4) the
# results recipe on REAL digits (configs/unipic/results_digits_h200.yaml: the same model widths, 3000 equal steps, lr
# and step chosen on val, judged by a scikit-learn classifier beside scikit-learn KDE / GMM samplers; <= 25 min).
#   bash benchmarks/unipic_h200.sh            (results: benchmarks/results/unipic_h200_{gen,train,compare}.json and
#                                              benchmarks/results/issue16/unipic_digits_h200/)
#   TINY=1 bash benchmarks/unipic_h200.sh     (the CPU smoke version of the same three commands)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
OUT=${OUT:-benchmarks/results}
mkdir -p "$OUT"
SMALL='{"mar": {"img_size": 32, "vae_stride": 2, "patch_size": 2, "latent_channels": 3, "encoder_dim": 256,
 "encoder_depth": 4, "encoder_heads": 8, "decoder_dim": 256, "decoder_depth": 4, "decoder_heads": 8, "buffer_size": 16,
 "attn_drop": 0.0, "proj_drop": 0.0, "diffloss_width": 256, "diffloss_depth": 3, "diffusion_steps": 1000,
 "sampling_steps": 50}, "llm": {"model_type": "qwen2", "hidden_size": 256, "intermediate_size": 688,
 "num_hidden_layers": 4, "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 261,
 "tie_word_embeddings": false, "use_sliding_window": false, "max_position_embeddings": 4096}}'
if [[ "${TINY:-0}" == "1" ]]; then
  P=unipic_tiny_smoke; MODEL=unipic_tiny; EXTRA=(--tiny); MK='{}'; SIZE=${SIZE:-32}; EPOCHS=1
else
  P=unipic_h200; MODEL=${MODEL:-unipic_1p5b}; EXTRA=(); MK=$SMALL; SIZE=${SIZE:-1024}; EPOCHS=${EPOCHS:-12}
fi
timeout 180 "$PY" benchmarks/bench_unipic.py gen --model "$MODEL" "${EXTRA[@]}" --size "$SIZE" --num-iter 64 \
  --out "$OUT/${P}_gen.json" || echo "gen failed or timed out"
timeout 200 "$PY" benchmarks/bench_unipic.py train --model "$MODEL" "${EXTRA[@]}" --batch "${TRAIN_BATCH:-1}" \
  --stages stage1_pt stage3_ct --compile both --steps 5 --out "$OUT/${P}_train.json" || echo "train failed or timed out"
timeout 170 "$PY" benchmarks/bench_unipic.py compare --model unipic_tiny "${EXTRA[@]}" --epochs "$EPOCHS" \
  --scenes 1200 --batch 32 --lr 5e-4 --num-iter 16 --model-kwargs "$MK" --root runs/unipic_bench/scenes \
  --out "$OUT/${P}_compare.json" || echo "compare failed or timed out"
DIGITS_OUT=$([[ "${TINY:-0}" == "1" ]] && echo "$OUT/unipic_digits_tiny_smoke" || echo benchmarks/results/issue16/unipic_digits_h200)
timeout 1500 "$PY" -m tasks.results.unipic --config configs/unipic/results_digits_h200.yaml "${EXTRA[@]}" \
  --out "$DIGITS_OUT" || echo "digits results recipe failed or timed out"
