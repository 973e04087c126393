#!/usr/bin/env bash
# Speed round 2b (issue 24, items 2 rest and 3) on one H200. Each case appends JSON lines to $D as it goes and runs
# under `timeout`; `all` fits one 10-minute device command (~8.5 min). The official PPGFlowECG code must be laid out
# first (git-ignored; the device tool carries it: carry [".upstream"]):
#   benchmarks/fetch_upstream.sh PPGFlowECG <bare git dir of github.com/PKUDigitalHealth/PPGFlowECG>
#
#   benchmarks/speed2b_h200.sh ape [OUT_DIR]   APE, Qwen2.5-0.5B shape, bf16, random weights, m 8/32/64 x Lc 512/2048:
#                                             cached-query prefill eager vs flex vs graph (APE(cuda_graphs=True):
#                                             fixed shapes, the query forward captured once and replayed) and a
#                                             16-token greedy answer per backend (decode_ms_per_token*, the graph
#                                             backend replays one captured decode step per token; tokens compared
#                                             with eager) -> $D/ape_speed2b.jsonl
#   benchmarks/speed2b_h200.sh ppg [OUT_DIR]   PPGFlowECG sampling (10 Euler steps, encode -> flow -> decode), batch
#                                             $PPG_BATCH (512), paper size, random weights: StaticSampler fp32 /
#                                             bf16 / compile + conv-as-2-D bf16 (one CUDA graph per call) and the
#                                             bench's compile-conv2d-cudagraph-bf16, beside the official code as
#                                             shipped (fp32) at the same batch in the same run; every output compared
#                                             with fp32 eager -> $D/ppgflowecg_speed2b.jsonl
#   benchmarks/speed2b_h200.sh all [OUT_DIR]   both (ape ~3 min, ppg ~5.5 min)
#   benchmarks/speed2b_h200.sh smoke [OUT_DIR] both at --tiny sizes on the GPU (~1.5 min; checks the script)
#   benchmarks/speed2b_h200.sh tiny [OUT_DIR]  both at --tiny sizes on the CPU (the test suite's check)
set -uo pipefail
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
cd "$(dirname "$0")/.."
D=${2:-benchmarks/results}
mkdir -p "$D"
PY=${PYTHON:-python3}
APE=("$PY" benchmarks/bench_ape.py --out "$D/ape_speed2b.jsonl")
PPG=("$PY" benchmarks/bench_ppgflowecg.py --benches sample --out "$D/ppgflowecg_speed2b.jsonl")
OFFICIAL=.upstream/PPGFlowECG
ape() { timeout 200 "${APE[@]}" --device cuda --m 8,32,64 --Lc 512,2048 --iters 3 --time-budget 160 \
  --backends eager,flex,graph --decode-tokens 16 || echo "ape: rc $?"; }
ppg() {
  local off=()
  if [ -d "$OFFICIAL" ]; then off=(--official-repo "$OFFICIAL"); else echo "no $OFFICIAL: official rows skipped"; fi
  timeout 335 "${PPG[@]}" --device cuda --batch "${PPG_BATCH:-512}" --time-budget 325 "${off[@]}" \
    --modes sampler-fp32,sampler-bf16,sampler-compile-conv2d-bf16,compile-conv2d-cudagraph-bf16 || echo "ppg: rc $?"
}
case "${1:-all}" in
ape) ape ;;
ppg) ppg ;;
all) ape; ppg ;;
smoke)
  timeout 120 "${APE[@]}" --device cuda --tiny --iters 1 --backends eager,flex,graph --decode-tokens 4 \
    || echo "ape smoke: rc $?"
  timeout 200 "${PPG[@]}" --device cuda --tiny --time-budget 190 \
    --modes sampler-fp32,sampler-bf16,sampler-compile-conv2d-bf16 || echo "ppg smoke: rc $?" ;;
tiny)
  "${APE[@]}" --device cpu --tiny --m 2 --Lc 6 --iters 1 --backends eager,graph --decode-tokens 3 || exit 1
  "${PPG[@]}" --device cpu --tiny --iters 1 --warmup 1 --modes eager-fp32,sampler-fp32,sampler-bf16 || exit 1 ;;
*) echo "usage: $0 ape|ppg|all|smoke|tiny [OUT_DIR]" >&2; exit 2 ;;
esac
