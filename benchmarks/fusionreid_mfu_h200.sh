#!/usr/bin/env bash
# Issue 24 item 5 on one H200: FusionReID paper-config training throughput and MFU (R50 + ViT-B/16 stride 12,
# 256x128, 751 classes, random init, bf16-mixed, synthetic on-device P x K batches) for variants that keep the maths,
# each against the current best path `base` (compile default + channels-last + the task's whole-step CUDA graph,
# batch 128: 1,774 img/s, 31.6% MFU at d2043e64). FLOPs and MFU as `sharezoo bench --task train` counts them.
# See benchmarks/fusionreid_mfu.py (--list names the modifiers). Every variant runs in its own process under its
# own `timeout`; each appends one JSON line (or an error line) to $D/fusionreid_mfu.jsonl as it ends, and writes
# its top-20 kernel table (CUDA time) to $D/profile_<variant>.txt and its output to $D/log_<variant>.txt;
# $D/summary.md tabulates them at the end (img/s, MFU, gain over base, kernel time per step by category).
#
#   benchmarks/fusionreid_mfu_h200.sh all [D]       the main matrix, one device call (<= 9 min, variants that no
#                                                   longer fit the budget are recorded as skipped)
#   benchmarks/fusionreid_mfu_h200.sh autotune [D]  max-autotune-no-cudagraphs (GEMM autotuning + Triton epilogue
#                                                   fusion), then coordinate-descent tuning: a second call, their
#                                                   cold tuning takes minutes (cat both calls' JSON lines into one
#                                                   folder and run fusionreid_mfu.py --summary --out it to compare)
#   benchmarks/fusionreid_mfu_h200.sh tiny [D]      the CPU smoke mode (fusionreid_tiny, compile off)
#   VARIANTS="base base+flash+b256" benchmarks/fusionreid_mfu_h200.sh all [D]   any list instead of the case's
set -uo pipefail
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 NO_ALBUMENTATIONS_UPDATE=1
cd "$(dirname "$0")/.."
CASE=${1:-all}
D=${2:-${OUT:+$OUT/fusionreid_mfu}}
D=${D:-benchmarks/results/fusionreid_mfu}
PY=${PYTHON:-python3}
BUDGET=${BUDGET:-540}   # seconds for the whole case (the device tool allows 600 per call)
MIN_LEFT=${MIN_LEFT:-75} # a variant starts only with at least this much of the budget left
mkdir -p "$D"
T0=$(date +%s)
one() {  # one variant: cap (s), name, extra args...
  local cap=$1 name=$2; shift 2
  local left=$(( BUDGET - ($(date +%s) - T0) ))
  if [ "$left" -lt "$MIN_LEFT" ]; then
    echo "=== $name: skipped (${left}s of the budget left)"
    printf '{"variant": "%s", "error": "skipped: %ss of the %ss budget left"}\n' "$name" "$left" "$BUDGET" \
      >> "$D/fusionreid_mfu.jsonl"
    return
  fi
  local limit=$(( cap < left ? cap : left ))
  echo "=== $name (timeout ${limit}s, $(date -u +%T))"
  timeout --kill-after=10 "$limit" "$PY" benchmarks/fusionreid_mfu.py --variant "$name" --out "$D" "$@" 2>&1 \
    | tee "$D/log_${name//+/_}.txt" | grep -v -e "UserWarning" -e "warnings.warn" -e "rank_zero_warn" | tail -n 25
  local rc=${PIPESTATUS[0]}
  echo "=== $name: rc $rc ($(( $(date +%s) - T0 ))s elapsed)"
  if [ "$rc" = 124 ] || [ "$rc" = 137 ]; then  # cut by the timeout before its line was written
    printf '{"variant": "%s", "error": "timeout after %ss (rc %s)"}\n' "$name" "$limit" "$rc" \
      >> "$D/fusionreid_mfu.jsonl"
  fi
}
case "$CASE" in
all)
  nvidia-smi --query-gpu=name,driver_version,clocks.max.sm --format=csv,noheader || true
  # in order of what each settles; base first (its cold compile fills inductor's caches for the others)
  # (the earlier profile of base ran cuDNN attention, torch's own choice: base+cudnn is expected to equal base)
  for v in ${VARIANTS:-base base+flash base+b256 base+aggr base+nocl base+cudnn}; do
    case "$v" in base) one 260 "$v" ;; *b256*) one 200 "$v" ;; *) one 170 "$v" ;; esac
  done
  ;;
autotune)
  # the tuning modes, whose compilation benchmarks kernels: GEMM autotuning first, then coordinate descent
  for v in ${VARIANTS:-base+autotune base+cdt}; do one 420 "$v"; done
  ;;
tiny)
  for v in ${VARIANTS:-base base+nocl base+flash+cdt}; do
    one 120 "$v" --tiny --device cpu --steps 2 --warmup 1 --profile-steps 1
  done
  ;;
*)
  echo "usage: $0 all|autotune|tiny [OUT_DIR]" >&2; exit 2 ;;
esac
"$PY" benchmarks/fusionreid_mfu.py --summary --out "$D"
