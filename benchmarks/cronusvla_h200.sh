#!/usr/bin/env bash
# CronusVLA on one H200 (issue 18). Two commands, each within one 10-minute device call:
#   benchmarks/cronusvla_h200.sh train [OUT_DIR]   train the PyBullet demo model longer, M = 4 then M = 1
#                                                  (configs/cronusvla/h200.yaml, h200_m1.yaml; <= 3 min 20 s each)
#   benchmarks/cronusvla_h200.sh bench [OUT_DIR]   paper shapes, random weights (benchmarks/bench_cronusvla.py):
#                                                  control-step latency 7B and 0.5B, 0.5B post-training step,
#                                                  eager vs compiled (regional)
#   benchmarks/cronusvla_h200.sh smoke [OUT_DIR]   CPU-sized check of both (what was tested on the CPU)
# `train` needs the demonstrations recorded beforehand on the CPU machine (the GPU image has no pybullet wheel for
# its Python 3.12): `python -c "from datamodules.robot_sim import write_libero_demos as w;
# w('runs/cronusvla/demos', episodes=30)"`, then run with carry=["runs/cronusvla/demos"] (28 MB). It writes the
# checkpoints under OUT_DIR; the closed-loop evaluation runs on the CPU machine (pybullet):
#   python -m tasks.cronusvla_eval --ckpt OUT_DIR/cronusvla_h200_m4/lightning_logs/version_0/checkpoints/last.ckpt \
#       --episodes 10 --out runs/cronusvla/eval_h200_m4.json      (and m1)
# A 7B post-training step is not measured: the paper trains it with FSDP over 64 GPUs (AdamW states alone ~120 GB).
set -uo pipefail
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 SHAREZOO_OFFLINE=1
D=${2:-${OUT:-benchmarks/results}}
mkdir -p "$D"
B=(python3 benchmarks/bench_cronusvla.py --out "$D/cronusvla.jsonl")
train() {
  test -f runs/cronusvla/demos/pick_red_cube_demo.hdf5 || { echo "runs/cronusvla/demos missing: carry it" >&2; exit 2; }
  for m in m4 m1; do
    cfg=configs/cronusvla/h200.yaml; [ $m = m1 ] && cfg=configs/cronusvla/h200_m1.yaml
    ( time timeout 250 python3 -m tasks.cli fit --config $cfg --trainer.default_root_dir "$D/cronusvla_h200_$m" ) \
      > "$D/cronusvla_h200_$m.log" 2>&1 || echo "fit $m: rc $?"
    tail -n 3 "$D/cronusvla_h200_$m.log"
  done
}
bench() {
  timeout 150 "${B[@]}" --benches step --model cronusvla_7b --modes eager || echo "step 7b eager: rc $?"
  timeout 90 "${B[@]}" --benches step --model cronusvla_0_5b --modes eager || echo "step 0.5b eager: rc $?"
  timeout 100 "${B[@]}" --benches train --model cronusvla_0_5b --batch 32 --modes eager --iters 10 || echo "train eager: rc $?"
  timeout 200 "${B[@]}" --benches step --model cronusvla_7b --modes compile || echo "step 7b compile: rc $?"
}
smoke() {
  "${B[@]}" --device cpu --tiny --modes eager
}
case "${1:-train}" in
train) train ;;
bench) bench ;;
smoke) smoke ;;
*) echo "usage: $0 train|bench|smoke [OUT_DIR]" >&2; exit 2 ;;
esac
