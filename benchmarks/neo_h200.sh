#!/usr/bin/env bash
# NEO on one H200 (issue 21), random weights, bench script benchmarks/bench_neo.py; each case appends JSON lines to
# $D/neo.jsonl as it goes and runs under `timeout`; `all` fits one 10-minute device command (~8.5 min).
#   benchmarks/neo_h200.sh step [OUT_DIR]      neo_2b packed training step (rows of 8,192 tokens = 30 docs of one
#                                              512x512 image + text, bf16 autocast, activation checkpointing, AdamW):
#                                              FlexAttention block mask (compiled) vs SDPA dense boolean mask;
#                                              tokens/s, MFU vs 989 TFLOP/s, peak memory
#   benchmarks/neo_h200.sh decode [OUT_DIR]    neo_2b bf16 greedy decoding of 128 tokens with the KV cache after a
#                                              one-image prompt, batch 1 and 8: decode tokens/s
#   benchmarks/neo_h200.sh ablation [OUT_DIR]  the scene-VQA ablation of docs/neo.md, larger: the 'small' size
#                                              (hidden 384, 2 pre-Buffer + 4 LLM layers), 4000 training scenes,
#                                              500 steps per variant, 5 variants, exact match on 1,200 test questions
#   benchmarks/neo_h200.sh all [OUT_DIR]       the three in that order
#   benchmarks/neo_h200.sh smoke [OUT_DIR]     every mode at --tiny sizes on the GPU (~1 min; checks the script)
set -uo pipefail
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
D=${2:-benchmarks/results}
B=(python3 benchmarks/bench_neo.py --device cuda --out "$D/neo.jsonl")
step() {
  timeout 170 "${B[@]}" step --model neo_2b --seq 8192 --grid 16 --text 64 --ckpt --warmup 2 --iters 4 \
    --backends flex || echo "step flex: rc $?"
  timeout 100 "${B[@]}" step --model neo_2b --seq 8192 --grid 16 --text 64 --ckpt --warmup 1 --iters 3 \
    --backends sdpa || echo "step sdpa: rc $?"
}
decode() { timeout 50 "${B[@]}" decode --model neo_2b --grid 16 --new 128 --decode-batches 1,8 || echo "decode: rc $?"; }
ablation() {
  timeout 220 "${B[@]}" ablation --size small --n-train 4000 --n-test 300 --steps 500 --batch 4 --lr 1e-3 --workers 6 \
    --variants neo,rope_1d,causal_mask,no_prebuffer,no_prebuffer_same_depth --root /tmp/neo_h200 || echo "ablation: rc $?"
}
case "${1:-all}" in
step) step ;;
decode) decode ;;
ablation) ablation ;;
all) step; decode; ablation ;;
smoke) for b in ablation step decode; do timeout 120 "${B[@]}" "$b" --tiny || echo "$b smoke: rc $?"; done ;;
*) echo "usage: $0 step|decode|ablation|all|smoke [OUT_DIR]" >&2; exit 2 ;;
esac
