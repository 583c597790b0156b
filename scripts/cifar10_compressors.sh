#!/usr/bin/env bash
# Every compressor of configs/compression/ on CIFAR-10 ResNet-20, 2 workers, one short schedule for all
# (default 3 epochs on a quarter of the training set), the dense baseline first, then one table.
#   bash scripts/cifar10_compressors.sh [EPOCHS] [FRACTION] [OUT]   (default 3 0.25 runs/cifar10-compressors)
# A run directory with a checkpoint resumes; logs (OUT/<name>.log) are appended to, never overwritten.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
EPOCHS=${1:-3}
FRACTION=${2:-0.25}
OUT=${3:-runs/cifar10-compressors}
NP=${NP:-2}
bash scripts/get_cifar10.sh
mkdir -p "$OUT"
export OMP_NUM_THREADS=1
run() {  # name, config files...
  local name=$1; shift
  echo "[compressors] $name"
  .venv/bin/horovodrun -np "$NP" -H "localhost:$NP" --gloo .venv/bin/python train.py \
    --configs configs/cifar/resnet20.py "$@" "train.num_epochs=$EPOCHS" "data.train_fraction=$FRACTION" \
    "train.scheduler.warmup_epochs=1" --run-dir "$OUT/$name" >> "$OUT/$name.log" 2>&1
}
run baseline
dirs=("$OUT/baseline")
for config in configs/compression/*.py; do
  name=$(basename "$config" .py)
  run "$name" "$config"
  dirs+=("$OUT/$name")
done
.venv/bin/python scripts/compare.py "${dirs[@]}" --target 50 --plots "$OUT" --output "$OUT/table.md"
