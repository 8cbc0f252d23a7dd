#!/usr/bin/env bash
# Cross-validated quality of a training recipe: K stratified folds, each trained and evaluated,
# then mean ± sd of the headline figures.
#
#   scripts/crossval.sh DATA_DIR OUT_DIR [K] -- [camsam train options...]
#   scripts/crossval.sh ../shared/data/magnetic-tile runs/cv 5 -- --background-class Free \
#       --input flat --image-size 128 --epochs 30
#
# SPLIT="python scripts/tile_split.py" makes the folds by tile instead (magnetic-tile only).
set -euo pipefail
data=$1 out=$2 folds=${3:-5}
shift 3 || shift $#
[ "${1:-}" = "--" ] && shift
camsam=${CAMSAM:-.venv/bin/camsam}
background=()
args=("$@")
for ((i = 0; i < ${#args[@]}; i++)); do
  [ "${args[i]}" = "--background-class" ] && background+=(--background-class "${args[i + 1]}")
done
mkdir -p "$out"
for ((fold = 0; fold < folds; fold++)); do
  dir=$out/fold$fold
  if [ -n "${SPLIT:-}" ]; then
    $SPLIT "$data" "$dir.split.json" --folds "$folds" --fold "$fold"
  else
    "$camsam" split "$data" --out "$dir.split.json" --folds "$folds" --fold "$fold"
  fi
  "$camsam" train "$data" --split "$dir.split.json" --model-dir "$dir" "$@" 2>"$dir.train.log"
  "$camsam" eval "$data" --split "$dir.split.json" --model-dir "$dir" "${background[@]}" \
    --out "$dir.eval.json" 2>/dev/null | tail -n 3
done
"${camsam%camsam}python" - "$out" "$folds" <<'PY'
import json, sys, statistics as st
out, folds = sys.argv[1], int(sys.argv[2])
reports = [json.load(open(f"{out}/fold{i}.eval.json")) for i in range(folds)]
for key in ("accuracy", "miou", "miou_given_class", "accept_rate", "accept_rate_given_class",
            "false_mask_rate"):
    values = [r[key] for r in reports]
    print(f"{key:<24} {st.mean(values):.3f} ± {st.stdev(values):.3f}   "
          + " ".join(f"{v:.3f}" for v in values))
PY
