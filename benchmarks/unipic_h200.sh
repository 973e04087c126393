#!/usr/bin/env bash
# UniPic on one H200 (issue 19), random weights, bench script benchmarks/bench_unipic.py. Each case runs under
# `timeout` and fits one 10-minute device command; every JSON is rewritten after each finished row, so a timeout keeps
# what finished. Results go to OUT_DIR (default benchmarks/results).
#   benchmarks/unipic_h200.sh gen [OUT_DIR]            1024^2 generation of unipic_1p5b (bf16, 64 MaskGIT steps, CFG 3,
#                                                      100 DiffLoss steps per token): time + peak memory (paper:
#                                                      < 15 GB) -> unipic_h200_gen.json (~1.5 min)
#   benchmarks/unipic_h200.sh train_eager [OUT_DIR]    unipic_1p5b training step, stage1_pt (LLM frozen) and
#                                                      stage3_ct (all trained), eager -> unipic_h200_train_eager.json
#                                                      (~2.5 min)
#   benchmarks/unipic_h200.sh train_compile [OUT_DIR]  the same two stages with compile='regional' (each MAR encoder /
#                                                      decoder block, DiffLoss res-block, Qwen2 layer and SigLIP layer
#                                                      compiled in place; one graph per block class): first step
#                                                      (compile) and warm step separately, losses per step beside the
#                                                      eager run's -> unipic_h200_train_compile.json (~5-8 min, cold)
#   benchmarks/unipic_h200.sh compare [OUT_DIR]        LLM bridge vs MAR-only on the SYNTHETIC scene set, the same 444
#                                                      optimiser steps (MAR 4+4 x 256, 4-layer LLM 256), judged on 120
#                                                      held-out scenes, + the judge's ground-truth / noise reference
#                                                      rows -> unipic_h200_compare.json (~6 min); ARMS="llm" or
#                                                      ARMS="bag refs" runs a part (the file keeps earlier parts)
#   benchmarks/unipic_h200.sh digits ARM LR [OUT_DIR]  one piece of the REAL-digits results recipe
#                                                      (configs/unipic/results_digits_h200.yaml): model ARM (unipic_llm
#                                                      or mar_only) at one lr of its grid (3e-4, 1e-3, 3e-3), 3000
#                                                      steps, val-best step -> issue16/unipic_digits_h200/ARM_lrLR/
#                                                      (~4-5 min each; 6 pieces)
#   benchmarks/unipic_h200.sh digits_all [OUT_DIR]     the 6 pieces AT ONCE on the one GPU (small models leave it mostly
#                                                      idle), each with a max_time guard (DIGITS_MAX_TIME, default
#                                                      00:00:07:30: the steps reached are in each results.json), then
#                                                      digits_pick; the pieces' folder packed as
#                                                      OUT_DIR/unipic_digits_h200.tar.gz for the trip back (~8-9 min)
#   benchmarks/unipic_h200.sh digits_pick [OUT_DIR]    CPU only: per arm, the lr piece with the best val accuracy ->
#                                                      issue16/unipic_digits_h200/picked.{json,md}
#   benchmarks/unipic_h200.sh official [OUT_DIR]       beside the OFFICIAL code (benchmarks/unipic_official.py: their
#                                                      UniPic-1 config and classes, random init, their pins from
#                                                      .whl/official_unipic into /tmp/site_unipic; carry
#                                                      .upstream/UniPic and that folder): ours first (gen 1024 /
#                                                      64 steps / CFG 3 -> unipic_h200_official_ours_gen.json; train
#                                                      eager stage1_pt + stage3_ct, 4 steps ->
#                                                      unipic_h200_official_ours_train.json), then theirs, the same
#                                                      shapes -> unipic_h200_official.jsonl (impl: official; <= 9 min)
#   TINY=1 benchmarks/unipic_h200.sh <case> ...         the CPU smoke version of a case (tiny model, seconds to minutes)
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
if [[ -z "${PY:-}" ]]; then if [[ -x .venv/bin/python ]]; then PY=.venv/bin/python; else PY=python3; fi; fi
CASE=${1:-}
ARM=; LR=; D=${2:-${OUT:-benchmarks/results}}
if [[ "$CASE" == "digits" ]]; then ARM=${2:-}; LR=${3:-}; D=${4:-${OUT:-benchmarks/results}}; fi
mkdir -p "$D"
SMALL='{"mar": {"img_size": 32, "vae_stride": 2, "patch_size": 2, "latent_channels": 3, "encoder_dim": 256,
 "encoder_depth": 4, "encoder_heads": 8, "decoder_dim": 256, "decoder_depth": 4, "decoder_heads": 8, "buffer_size": 16,
 "attn_drop": 0.0, "proj_drop": 0.0, "diffloss_width": 256, "diffloss_depth": 3, "diffusion_steps": 1000,
 "sampling_steps": 50}, "llm": {"model_type": "qwen2", "hidden_size": 256, "intermediate_size": 688,
 "num_hidden_layers": 4, "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 261,
 "tie_word_embeddings": false, "use_sliding_window": false, "max_position_embeddings": 4096}}'
if [[ "${TINY:-0}" == "1" ]]; then  # CPU smoke: the tiny model, tiny sizes; compile on one stage only (CPU inductor)
  P=unipic_tiny_smoke; MODEL=unipic_tiny; EXTRA=(--tiny); MK='{}'; SIZE=32; COMPILE_STAGES=(stage1_pt)
  DIGITS=$D/unipic_digits_tiny_smoke; WORKERS=0
else
  P=unipic_h200; MODEL=${MODEL:-unipic_1p5b}; EXTRA=(); MK=$SMALL; SIZE=${SIZE:-1024}
  COMPILE_STAGES=(stage1_pt stage3_ct); DIGITS=$D/issue16/unipic_digits_h200; WORKERS=4
fi
B=("$PY" benchmarks/bench_unipic.py)
gen() {
  timeout 180 "${B[@]}" gen --model "$MODEL" "${EXTRA[@]}" --size "$SIZE" --num-iter 64 --out "$D/${P}_gen.json" \
    || echo "gen: rc $?"
}
train_eager() {
  timeout 300 "${B[@]}" train --model "$MODEL" "${EXTRA[@]}" --batch 1 --stages stage1_pt stage3_ct --compile off \
    --steps 6 --out "$D/${P}_train_eager.json" || echo "train_eager: rc $?"
}
train_compile() {  # cold: ~1-2 min of block compiles per stage (stage3_ct recompiles the now-trained LLM layers)
  timeout 570 "${B[@]}" train --model "$MODEL" "${EXTRA[@]}" --batch 1 --stages "${COMPILE_STAGES[@]}" \
    --compile regional --steps 6 --out "$D/${P}_train_compile.json" || echo "train_compile: rc $?"
}
compare() {  # 12 epochs x 1200 // 32 = 444 steps per arm; one scene folder (named by its counts), written once (~20 s)
  # shellcheck disable=SC2086
  timeout 570 "${B[@]}" compare --model unipic_tiny "${EXTRA[@]}" --epochs 12 --scenes 1200 --test-scenes 120 \
    --batch 32 --lr 5e-4 --num-iter 16 --workers "$WORKERS" --model-kwargs "$MK" --arms ${ARMS:-llm bag refs} \
    --out "$D/${P}_compare.json" || echo "compare: rc $?"
}
digits() {  # one (model, lr) piece of the recipe: its config with models / lrs cut to that piece, decoded in memory
  if [[ -z "$ARM" || -z "$LR" ]]; then echo "usage: $0 digits unipic_llm|mar_only LR [OUT_DIR]" >&2; exit 2; fi
  local piece="$DIGITS/${ARM}_lr${LR}"
  mkdir -p "$piece"
  "$PY" -c 'import sys, yaml
c = yaml.safe_load(open("configs/unipic/results_digits_h200.yaml"))
arm, lr = sys.argv[2], float(sys.argv[3])
models, lrs = list(c["models"]), [float(x) for x in c["train"]["lrs"]]
if arm not in models or not any(abs(lr - x) < 1e-12 for x in lrs):
    sys.exit(f"digits: {arm} / {lr:g} is not a model / lr of the recipe (models {models}, lrs {lrs})")
c["models"] = {arm: c["models"][arm]}
c["train"].update(lrs=[lr], in_memory=True)
if len(sys.argv) > 4 and sys.argv[4]:
    c["train"]["max_time"] = sys.argv[4]
yaml.safe_dump(c, open(sys.argv[1], "w"), sort_keys=False)' "$piece/config.yaml" "$ARM" "$LR" "${MAX_TIME:-}" || exit 2
  timeout 570 "$PY" -m tasks.results.unipic --config "$piece/config.yaml" "${EXTRA[@]}" --out "$piece" \
    || echo "digits $ARM $LR: rc $?"
}
digits_all() {  # every (model, lr) piece of the recipe at once, then the val pick; one tarball comes back
  local arms lrs pids=() recipe=configs/unipic/results_digits_h200.yaml
  arms=$("$PY" -c 'import sys, yaml; print(" ".join(yaml.safe_load(open(sys.argv[1]))["models"]))' "$recipe")
  lrs=$("$PY" -c 'import sys, yaml; print(" ".join(map(str, yaml.safe_load(open(sys.argv[1]))["train"]["lrs"])))' \
    "$recipe")
  mkdir -p "$DIGITS"
  for a in $arms; do for l in $lrs; do
    ( ARM=$a LR=$l MAX_TIME=${DIGITS_MAX_TIME:-00:00:07:30} digits > "$DIGITS/../${a}_lr${l}.log" 2>&1 ) & pids+=($!)
  done; done
  for p in "${pids[@]}"; do wait "$p"; done
  tail -n 2 "$DIGITS"/../*_lr*.log
  digits_pick
  tar czf "$D/unipic_digits_h200.tar.gz" -C "$DIGITS/.." "$(basename "$DIGITS")" $(cd "$DIGITS/.." && ls ./*_lr*.log)
}
digits_pick() {  # per arm, the lr piece whose val accuracy is best (ties: the smaller lr); test rows of that piece
  "$PY" - "$DIGITS" <<'EOF'
import json, sys
from pathlib import Path

root = Path(sys.argv[1])
pieces = [json.loads(p.read_text()) for p in sorted(root.glob("*_lr*/results.json"))]
if not pieces:
    sys.exit(f"digits_pick: no {root}/<model>_lr<lr>/results.json yet (run the digits pieces first)")
best = {}
for r in pieces:
    o = r["ours"][0]
    if o["name"] not in best or (o["val_acc"], -o["lr"]) > (best[o["name"]]["ours"][0]["val_acc"],
                                                            -best[o["name"]]["ours"][0]["lr"]):
        best[o["name"]] = r
grid = {n: sorted((r["ours"][0]["lr"], r["ours"][0]["val_acc"]) for r in pieces if r["ours"][0]["name"] == n)
        for n in best}
rows = [row for r in best.values() for row in r["rows"] if row["kind"] == "ours"]
rows += [row for row in next(iter(best.values()))["rows"] if row["kind"] != "ours"] if best else []
out = {"picked": {n: {"lr": r["ours"][0]["lr"], "val_acc": r["ours"][0]["val_acc"], "step": r["ours"][0]["step"]}
                  for n, r in best.items()}, "lr_grid_val_acc": grid, "rows": rows}
(root / "picked.json").write_text(json.dumps(out, indent=1) + "\n")
lines = [f"{n}: lr {v['lr']:g} (val acc. {v['val_acc']:.3f}, step {v['step']}); grid {grid[n]}"
         for n, v in out["picked"].items()]
lines += [json.dumps(row) for row in rows]
(root / "picked.md").write_text("\n".join(lines) + "\n")
print("\n".join(lines))
EOF
}
official() {  # their process gets their pinned transformers / timm / mmengine first on sys.path (own site folder)
  local site=/tmp/site_unipic abi off=(--size 1024 --num-iter 64)
  [[ "${TINY:-0}" == 1 ]] && off=(--tiny --device cpu)
  test -f .upstream/UniPic/UniPic-1/configs/models/qwen2_5_1_5b_kl16_mar_h.py \
    || { echo "no .upstream/UniPic: carry it (benchmarks/fetch_upstream.sh UniPic)" >&2; exit 2; }
  abi=cp$("$PY" -c 'import sys; print(f"{sys.version_info[0]}{sys.version_info[1]}")')
  # shellcheck disable=SC2046
  "$PY" -m pip install -q --no-index --no-deps --no-compile --upgrade --target "$site" \
    $(ls .whl/official_unipic/*.whl | grep -v '/tokenizers-') .whl/official_unipic/tokenizers-*-"$abi"-*.whl \
    || { echo "official: wheels: rc $?" >&2; exit 2; }
  # ours first, so both sides come from one run (timeouts sum to 530 s)
  timeout 120 "${B[@]}" gen --model "$MODEL" "${EXTRA[@]}" --size "$SIZE" --num-iter 64 \
    --out "$D/${P}_official_ours_gen.json" || echo "ours gen: rc $?"
  timeout 140 "${B[@]}" train --model "$MODEL" "${EXTRA[@]}" --batch 1 --stages stage1_pt stage3_ct --compile off \
    --steps 4 --out "$D/${P}_official_ours_train.json" || echo "ours train: rc $?"
  timeout 130 "$PY" benchmarks/unipic_official.py train --site "$site" "${off[@]}" --stages stage1_pt stage3_ct \
    --steps 4 --out "$D/${P}_official.jsonl" || echo "official train: rc $?"
  timeout 140 "$PY" benchmarks/unipic_official.py gen --site "$site" "${off[@]}" --out "$D/${P}_official.jsonl" \
    || echo "official gen: rc $?"
}
case "$CASE" in
gen) gen ;;
official) official ;;
train_eager) train_eager ;;
train_compile) train_compile ;;
compare) compare ;;
digits) digits ;;
digits_all) digits_all ;;
digits_pick) digits_pick ;;
*) echo "usage: $0 gen|train_eager|train_compile|compare|official|digits_all|digits_pick [OUT_DIR]" \
    "| digits ARM LR [OUT_DIR]" >&2
  exit 2 ;;
esac
