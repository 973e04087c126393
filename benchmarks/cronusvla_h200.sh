#!/usr/bin/env bash
# CronusVLA on one H200 (issue 18). Each command fits in one 10-minute device call:
#   benchmarks/cronusvla_h200.sh train [OUT_DIR]   M = 4 vs M = 1 on the PyBullet demos (docs/cronusvla.md "H200
#                                                  training"): stage 1 (regression, configs/cronusvla/h200_stage1.yaml,
#                                                  <= 2 min 30 s), then 3 seeds x {M = 4 (h200.yaml), M = 1
#                                                  (h200_m1.yaml)} of frozen-VLM cached-feature post-training, all six
#                                                  at once on the one GPU (<= 5 min 45 s), then the 8 files for the
#                                                  trip back (benchmarks/cronusvla_h200_collect.py): the six
#                                                  checkpoints at the last step both M reached, a summary JSON, logs
#   benchmarks/cronusvla_h200.sh bench [OUT_DIR]   paper shapes, random weights (benchmarks/bench_cronusvla.py):
#                                                  control-step latency 7B and 0.5B, 0.5B post-training step,
#                                                  eager vs compiled (regional) vs CUDA-graphed control step
#   benchmarks/cronusvla_h200.sh official [OUT_DIR]  the OFFICIAL predict_action (benchmarks/cronusvla_official.py:
#                                                  their classes, random init, their pins from .whl/official_cronusvla
#                                                  into /tmp/site_cronus; carry .upstream/CronusVLA and that folder),
#                                                  fp32 weights as their policy and --bf16-vlm, rows appended
#                                                  beside ours (impl: official), our eager + graphed control step
#                                                  of the same model first (same call). MODELS ("7b 0_5b"; one
#                                                  model <= 5.5 min, both <= 10.5: give one per call),
#                                                  TRAIN_COMPILE=1 adds the 0.5B compiled post-training step (2.5 min)
#   benchmarks/cronusvla_h200.sh smoke [OUT_DIR]   CPU-sized check of bench (what was tested on the CPU)
#   CRONUSVLA_H200_SMOKE=1 benchmarks/cronusvla_h200.sh train OUT_DIR     CPU-sized check of train (a few steps)
# `train` needs the demonstrations recorded beforehand on the CPU machine (the GPU image has no pybullet wheel for
# its Python 3.12; 19.8 MB, carry it): `python -m datamodules.robot_sim.record --root runs/cronusvla/demos_h200
# --episodes 100 --spread 0.25 --no-wrist`. Environment: CRONUSVLA_DEMOS (that folder), CRONUSVLA_H200_WORK (the runs'
# folder, runs/cronusvla_h200), CRONUSVLA_H200_SEEDS ("0 1 2"), PYTHON (python3). The closed-loop evaluation runs on
# the CPU machine (pybullet), per returned checkpoint:
#   python -m tasks.cronusvla_eval --ckpt OUT_DIR/cronusvla_h200_m4_s0.ckpt --tasks pick_red_cube push_block_left \
#       cube_in_tray --spread 0.25 --episodes 30 --out runs/cronusvla/eval_h200_m4_s0.json     (m1, s1, s2 alike)
# A 7B post-training step is not measured: the paper trains it with FSDP over 64 GPUs (AdamW states alone ~120 GB).
set -uo pipefail
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 SHAREZOO_OFFLINE=1
D=${2:-${OUT:-benchmarks/results}}
mkdir -p "$D"
B=(python3 benchmarks/bench_cronusvla.py --out "$D/cronusvla.jsonl")
train() {
  local demos=${CRONUSVLA_DEMOS:-runs/cronusvla/demos_h200} work=${CRONUSVLA_H200_WORK:-runs/cronusvla_h200}
  local seeds=${CRONUSVLA_H200_SEEDS:-0 1 2} py=${PYTHON:-python3} t0=$SECONDS s m cfg rc
  for f in pick_red_cube push_block_left cube_in_tray; do
    test -f "$demos/${f}_demo.hdf5" || { echo "$demos/${f}_demo.hdf5 missing: record it here, carry it" >&2; exit 2; }
  done
  local -a common=(--data.init_args.root "$demos")
  if [ "${CRONUSVLA_H200_SMOKE:-0}" = 1 ]; then  # CPU-sized: a few steps of everything
    common+=(--trainer.accelerator cpu --trainer.max_steps 4 --trainer.val_check_interval 2
             --trainer.limit_val_batches 1 --data.init_args.batch_size 4 --data.init_args.num_workers 0)
  fi
  if [ -n "$(ls -A "$work" 2>/dev/null)" ] && [ ! -f "$work/times.tsv" ]; then
    echo "$work holds something else than an earlier train run: set CRONUSVLA_H200_WORK" >&2; exit 2
  fi
  rm -rf "$work"; mkdir -p "$work"
  fit() {  # name timeout config args...: one run, its log and its line in times.tsv
    local name=$1 limit=$2 cfg=$3 start=$SECONDS; shift 3
    timeout -k 10 "$limit" "$py" -m tasks.cli fit --config "$cfg" --trainer.default_root_dir "$work/$name" \
      --trainer.logger.init_args.save_dir "$work/$name" "${common[@]}" "$@" > "$work/$name.log" 2>&1
    rc=$?
    printf '%s\t%s\t%s\n' "$name" "$rc" $((SECONDS - start)) >> "$work/times.tsv"
    echo "$name: rc $rc, $((SECONDS - start)) s"; [ $rc = 0 ] || tail -n 5 "$work/$name.log"
  }
  fit stage1 150 configs/cronusvla/h200_stage1.yaml
  local s1ckpt; s1ckpt=$(ls "$work"/stage1/lightning_logs/version_*/checkpoints/last.ckpt 2>/dev/null | tail -n 1)
  test -n "$s1ckpt" || { echo "stage 1 left no last.ckpt" >&2; exit 1; }
  for s in $seeds; do  # all runs at once: each is bound by its own CPU thread (launches, cache keys, loader)
    for m in m4 m1; do
      cfg=configs/cronusvla/h200.yaml; [ $m = m1 ] && cfg=configs/cronusvla/h200_m1.yaml
      OMP_NUM_THREADS=1 fit "${m}_s$s" 345 $cfg --seed_everything "$s" --model.init_args.init_from "$s1ckpt" &
    done
  done
  wait
  printf 'total\t0\t%s\n' $((SECONDS - t0)) >> "$work/times.tsv"
  # shellcheck disable=SC2086
  "$py" benchmarks/cronusvla_h200_collect.py --work "$work" --out "$D" --seeds $seeds
}
bench() {
  # timeouts sum to 540 s (the four commands took 168 s in all before the graph lines)
  timeout 120 "${B[@]}" --benches step --model cronusvla_7b --modes eager || echo "step 7b eager: rc $?"
  timeout 70 "${B[@]}" --benches step --model cronusvla_0_5b --modes eager || echo "step 0.5b eager: rc $?"
  timeout 90 "${B[@]}" --benches train --model cronusvla_0_5b --batch 32 --modes eager --iters 10 || echo "train eager: rc $?"
  for m in cronusvla_7b:90 cronusvla_0_5b:60; do  # whole-step CUDA graphs (CronusVLAPolicy(cuda_graphs=True))
    timeout "${m#*:}" "${B[@]}" --benches step --model "${m%:*}" --modes graph || echo "step ${m%:*} graph: rc $?"; done
  timeout 110 "${B[@]}" --benches step --model cronusvla_7b --modes compile || echo "step 7b compile: rc $?"
}
smoke() {
  "${B[@]}" --device cpu --tiny --modes eager
}
official() {  # their process gets their pinned transformers / timm first on sys.path (tokenizers: the python's ABI)
  local abi site=/tmp/site_cronus m f extra=()
  local precisions=("" --bf16-vlm)  # their policy's fp32 weights (VLM under CUDA bf16 autocast), and its use_bf16
  # CPU smoke: tiny sizes, fp32 only (their autocast is CUDA-only, so a bf16 VLM cannot run on a CPU)
  [[ "${TINY:-0}" == 1 ]] && extra=(--tiny --iters 1 --warmup 0) && precisions=("")
  abi=cp$(python3 -c 'import sys; print(f"{sys.version_info[0]}{sys.version_info[1]}")')
  test -d .upstream/CronusVLA || { echo "no .upstream/CronusVLA: carry it (fetch_upstream.sh CronusVLA)" >&2; exit 2; }
  python3 -m pip install -q --no-index --no-deps --no-compile --target "$site" \
    $(ls .whl/official_cronusvla/*.whl | grep -v '/tokenizers-') .whl/official_cronusvla/tokenizers-*-"$abi"-*.whl \
    || { echo "official: wheels: rc $?" >&2; exit 2; }
  for m in ${MODELS:-7b 0_5b}; do
    if [[ "${TINY:-0}" != 1 ]]; then  # ours first, in the same call: eager and CUDA-graphed control steps
      timeout 100 "${B[@]}" --benches step --model "cronusvla_$m" --modes eager,graph || echo "ours $m: rc $?"
    fi
    for f in "${precisions[@]}"; do
      # shellcheck disable=SC2086
      HF_HUB_OFFLINE=1 timeout 110 python3 benchmarks/cronusvla_official.py --site "$site" --model $m $f --iters 20 \
        --warmup 3 "${extra[@]}" --out "$D/cronusvla.jsonl" || echo "official $m $f: rc $?"
    done
  done
  if [[ "${TRAIN_COMPILE:-0}" == 1 ]]; then  # the 0.5B post-training step, regional compile (eager: session 8)
    timeout 150 "${B[@]}" --benches train --model cronusvla_0_5b --batch 32 --modes compile --iters 10 ||
      echo "train compile: rc $?"
  fi
}
case "${1:-train}" in
train) train ;;
bench) bench ;;
official) official ;;
smoke) smoke ;;
*) echo "usage: $0 train|bench|official|smoke [OUT_DIR]" >&2; exit 2 ;;
esac
