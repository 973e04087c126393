#!/usr/bin/env bash
# Speed round 2 (issue 24, items 1-2) on one H200, random weights, Qwen2.5-0.5B shape, bf16. Each case appends JSON
# lines to $D as it goes and runs under `timeout`; `all` fits one 10-minute device command (~8.5 min).
#   benchmarks/speed2_h200.sh prefix [OUT_DIR]  GRPO fwd+bwd step (grad checkpointing): repeated-prefix baseline vs
#                                              Prefix Grouper split (SDPA + gathers) vs Prefix Grouper flex (one
#                                              compiled FlexAttention kernel per layer), P 1k/4k/16k x S 256 x G 4/16,
#                                              then P 4k x S 1024 x G 8; per point: step time, peak memory; summary:
#                                              speedup_measured, speedup_bound_analytic, fraction_of_analytic
#                                              -> $D/prefix_grouper_speed2.jsonl
#   benchmarks/speed2_h200.sh ape [OUT_DIR]     APE cached-query prefill, m 8/32/64 contexts x Lc 512/2048: sequential
#                                              vs query with eager LSE merge vs FlexAttention (LSE per segment);
#                                              speedup_cached(_flex), speedup_analytic, fraction_of_analytic(_flex),
#                                              peak memory -> $D/ape_speed2.jsonl
#   benchmarks/speed2_h200.sh all [OUT_DIR]     both (prefix ~6 min, ape ~2.5 min)
#   benchmarks/speed2_h200.sh smoke [OUT_DIR]   both at --tiny sizes on the GPU (~1 min; checks the script)
#   benchmarks/speed2_h200.sh tiny [OUT_DIR]    both at --tiny sizes on the CPU (the test suite's check)
set -uo pipefail
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
cd "$(dirname "$0")/.."
D=${2:-benchmarks/results}
mkdir -p "$D"
PY=${PYTHON:-python3}
PG=("$PY" benchmarks/bench_prefix_grouper.py --out "$D/prefix_grouper_speed2.jsonl")
APE=("$PY" benchmarks/bench_ape.py --out "$D/ape_speed2.jsonl")
prefix() {
  timeout 290 "${PG[@]}" --device cuda --P 1024,4096,16384 --S 256 --G 4,16 --probe-G 4 --warmup 1 --iters 3 \
    --time-budget 250 || echo "prefix main: rc $?"
  timeout 80 "${PG[@]}" --device cuda --P 4096 --S 1024 --G 8 --probe-G 8 --warmup 1 --iters 2 \
    --time-budget 60 || echo "prefix S1024: rc $?"
}
ape() { timeout 150 "${APE[@]}" --device cuda --m 8,32,64 --Lc 512,2048 --iters 3 --time-budget 120 \
  --backends eager,flex || echo "ape: rc $?"; }
case "${1:-all}" in
prefix) prefix ;;
ape) ape ;;
all) prefix; ape ;;
smoke)
  timeout 200 "${PG[@]}" --device cuda --tiny --warmup 1 --iters 1 || echo "prefix smoke: rc $?"
  timeout 120 "${APE[@]}" --device cuda --tiny --iters 1 || echo "ape smoke: rc $?" ;;
tiny)
  "${PG[@]}" --device cpu --tiny --P 12 --S 4 --G 2 --probe-G 2 --warmup 0 --iters 1 || exit 1
  "${APE[@]}" --device cpu --tiny --m 2 --Lc 6 --iters 1 || exit 1 ;;
*) echo "usage: $0 prefix|ape|all|smoke|tiny [OUT_DIR]" >&2; exit 2 ;;
esac
