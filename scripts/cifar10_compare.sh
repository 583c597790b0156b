#!/usr/bin/env bash
# Baseline vs DGC (the paper's warm-up, fp16 values, int32 indices) on the JPEG CIFAR-10 copy: ResNet-20, 2 workers,
# the configs/cifar schedule, then
# scripts/compare.py (Markdown table + plots into the output folder).
#   bash scripts/cifar10_compare.sh [EPOCHS] [OUT]     EPOCHS (default 200, the standard schedule) shortens
#                                                       the cosine schedule; OUT default runs/cifar10-compare-e<EPOCHS>
#   PARALLEL=1  runs baseline and DGC at the same time (each gets half the cores); default: one after the other.
#   NP=2, EXTRA="data.train_fraction=0.1 ..." for more workers or extra overrides.
# A run directory with a checkpoint resumes, so the same command continues an interrupted comparison;
# each run's log (OUT/<run>.log) is appended to, never overwritten.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
EPOCHS=${1:-200}
OUT=${2:-runs/cifar10-compare-e$EPOCHS}
NP=${NP:-2}
PY=.venv/bin/python
bash scripts/get_cifar10.sh
mkdir -p "$OUT"
export OMP_NUM_THREADS=1
run() {  # name, config files...
  local name=$1; shift
  .venv/bin/horovodrun -np "$NP" -H "localhost:$NP" --gloo $PY train.py \
    --configs configs/cifar/resnet20.py "$@" "train.num_epochs=$EPOCHS" ${EXTRA:-} --run-dir "$OUT/$name" \
    >> "$OUT/$name.log" 2>&1
}
if [ -n "${PARALLEL:-}" ]; then
  run baseline & b=$!
  run dgc configs/dgc/paper_warmup.py configs/dgc/fp16.py configs/dgc/int32.py & d=$!
  wait $b; wait $d
else
  run baseline
  run dgc configs/dgc/paper_warmup.py configs/dgc/fp16.py configs/dgc/int32.py
fi
$PY scripts/compare.py "$OUT/baseline" "$OUT/dgc" --target 85 --plots "$OUT" --output "$OUT/table.md"
