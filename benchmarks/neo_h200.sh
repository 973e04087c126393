#!/usr/bin/env bash
# NEO on one H200 (issue 21), random weights, bench script benchmarks/bench_neo.py; each case appends JSON lines to
# $D/neo.jsonl as it goes and runs under `timeout`. Three 10-minute device commands: `all` (step + a short decode,
# <= 6.5 min), `decode` (every decode mode, <= 9.5 min) and `ablation` (<= 9.5 min).
#   benchmarks/neo_h200.sh step [OUT_DIR]      neo_2b packed training step (rows of 8,192 tokens = 21 docs of one
#                                              512x512 image + text, bf16 autocast, activation checkpointing, AdamW):
#                                              FlexAttention block mask (compiled) vs SDPA dense boolean mask;
#                                              tokens/s, MFU vs 989 TFLOP/s, peak memory
#   benchmarks/neo_h200.sh decode [OUT_DIR]    neo_2b bf16 greedy decoding of 128 tokens after a one-image prompt,
#                                              batch 1 and 8, one row per mode: dynamic cache (eager), static cache
#                                              as a CUDA graph, compiled + CUDA graph, static eager, compiled
#                                              (each row <= 120 s: a slow compile cannot eat the call)
#   benchmarks/neo_h200.sh ablation [OUT_DIR]  the scene-VQA ablation of docs/neo.md, larger: the 'small' size
#                                              (hidden 384, 2 pre-Buffer + 4 LLM layers), 4000 training scenes,
#                                              500 steps per variant, 5 variants, exact match on 1,200 test questions
#   benchmarks/neo_h200.sh digits [OUT_DIR]    the REAL-data results recipe (configs/neo/results_digits.yaml: digit
#                                              VQA, same split and baselines) larger: the 'small' size (hidden 384,
#                                              2 pre-Buffer + 4 LLM layers), bf16, 4 packed rows per step, 3,000
#                                              steps (best-val checkpoint, val every 250) -> $D/issue16/neo_digits_h200
#   benchmarks/neo_h200.sh all [OUT_DIR]       step, then decode_quick: 32 tokens, dynamic cache vs static cache
#                                              as a CUDA graph (not decode, ablation, digits: own calls)
#   benchmarks/neo_h200.sh ablation_seeds [OUT_DIR]  the same ablation, every variant x training seed (SEEDS,
#                                              default "0 1"; the scene set of seed 0 for all) as concurrent
#                                              processes on the one GPU (10 runs; each <= 560 s; their logs
#                                              in neo_ablation_logs.tar.gz); TINY=1: a CPU smoke run
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
decode() {
  timeout 570 "${B[@]}" decode --model neo_2b --grid 16 --new 128 --decode-batches 1,8 --row-timeout 120 \
    --decode-modes dynamic,static_graph,static_compile_graph,static,static_compile || echo "decode: rc $?"
}
decode_quick() {
  timeout 110 "${B[@]}" decode --model neo_2b --grid 16 --new 32 --decode-batches 1,8 --row-timeout 40 \
    --decode-modes dynamic,static_graph || echo "decode_quick: rc $?"
}
ablation() {
  timeout 570 "${B[@]}" ablation --size small --n-train 4000 --n-test 300 --steps 500 --batch 4 --lr 1e-3 --workers 6 \
    --variants neo,rope_1d,causal_mask,no_prebuffer,no_prebuffer_same_depth --root /tmp/neo_h200 || echo "ablation: rc $?"
}
ablation_seeds() {  # every variant x training seed at once on the one GPU (small models leave it mostly idle)
  local v s logs=/tmp/neo_ablation_logs pids=()
  local abl=(--size small --n-train 4000 --n-test 300 --steps 500 --batch 4 --lr 1e-3 --root /tmp/neo_h200)
  [[ "${TINY:-0}" == 1 ]] && abl=(--tiny --device cpu --out "$D/neo_seeds_smoke.jsonl" --root "$D/neo_scenes_smoke")
  mkdir -p "$logs"
  timeout 120 "${B[@]}" ablation "${abl[@]}" --prepare-only || { echo "ablation_seeds: scene set: rc $?"; return; }
  for s in ${SEEDS:-0 1}; do for v in ${VARIANTS:-neo rope_1d causal_mask no_prebuffer no_prebuffer_same_depth}; do
    timeout 560 "${B[@]}" ablation "${abl[@]}" --variants "$v" --train-seed "$s" --workers 1 \
      > "$logs/${v}_s$s.log" 2>&1 & pids+=($!)
  done; done
  for p in "${pids[@]}"; do wait "$p" || echo "ablation_seeds: a run ended with rc $?"; done
  tail -qn 1 "$logs"/*.log
  tar czf "$D/neo_ablation_logs.tar.gz" -C "$logs" .  # one file back (a device call returns at most 8)
}
digits() {  # the CPU recipe's config with a larger model and budget, written next to the results
  mkdir -p "$D/issue16/neo_digits_h200"
  python3 -c 'import sys, yaml
c = yaml.safe_load(open("configs/neo/results_digits.yaml"))
c["task"]["model_kwargs"].update(hidden_size=384, intermediate_size=1152, num_attention_heads=6, num_key_value_heads=2,
                                 head_dim=64, vision_width=256, num_buffer_layers=2, num_hidden_layers=4)
c["task"].update(lr=1e-3, warmup_steps=100)
c["dataset"].update(batch_size=4, eval_batch_size=360)
c["training"].update(accelerator="gpu", precision="bf16-mixed", max_steps=3000, val_check_interval=250)
yaml.safe_dump(c, open(sys.argv[1], "w"))' "$D/issue16/neo_digits_h200/config.yaml"
  timeout 520 python3 -m tasks.results.neo --config "$D/issue16/neo_digits_h200/config.yaml" \
    --out "$D/issue16/neo_digits_h200" || echo "digits: rc $?"
}
case "${1:-all}" in
step) step ;;
decode) decode ;;
ablation) ablation ;;
ablation_seeds) ablation_seeds ;;
digits) digits ;;
decode_quick) decode_quick ;;
all) step; decode_quick ;;
smoke) for b in ablation step decode; do timeout 120 "${B[@]}" "$b" --tiny || echo "$b smoke: rc $?"; done
  timeout 120 python3 -m tasks.results.neo --config configs/neo/results_digits.yaml --tiny \
    --out "$D/neo_digits_smoke" || echo "digits smoke: rc $?" ;;
*) echo "usage: $0 step|decode|decode_quick|ablation|ablation_seeds|digits|all|smoke [OUT_DIR]" >&2; exit 2 ;;
esac
