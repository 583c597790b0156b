#!/usr/bin/env bash
# The main job end to end on the embedded digits: baseline and DGC (ratio 0.001, 5-epoch warm-up), 2 workers
# each, then the comparison table and plots (runs/demo/), then the DGC model compressed for storage
# (scripts/compress_model.py: runs/demo/dgc.dgcz) and its test accuracy. Rerunning starts fresh runs (the old ones are
# moved aside to runs/demo.<timestamp>/, never deleted).
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
OUT=runs/demo
NP=${NP:-2}
if [ -e "$OUT" ]; then
  old="$OUT.$(date +%Y%m%d-%H%M%S)"; mv "$OUT" "$old"; echo "[demo] previous demo moved to $old"
fi
mkdir -p "$OUT"
export OMP_NUM_THREADS=1
for run in baseline dgc; do
  extra=(); [ "$run" = dgc ] && extra=(configs/dgc/wm5.py)
  echo "[demo] training $run on digits with $NP workers"
  if ! .venv/bin/horovodrun -np "$NP" -H "localhost:$NP" --gloo .venv/bin/python train.py \
      --configs configs/digits/digitsnet.py "${extra[@]}" --run-dir "$OUT/$run" > "$OUT/$run.log" 2>&1; then
    tail -40 "$OUT/$run.log"; echo "[demo] $run failed; full log: $OUT/$run.log" >&2; exit 1
  fi
  grep -E "<stdout>:(epoch [0-9]+/|done)" "$OUT/$run.log" | sed 's/^\[0\]<stdout>://'
done
.venv/bin/python scripts/compare.py "$OUT/baseline" "$OUT/dgc" --target 95 --plots "$OUT" --output "$OUT/table.md"
echo "[demo] compressing the DGC-trained model for storage (prune 50%, k-means 5 bits, Huffman) and evaluating it"
.venv/bin/python scripts/compress_model.py "$OUT/dgc" --out "$OUT/dgc.dgcz" --prune 0.5 --bits 5 --huffman | tail -1
.venv/bin/python train.py --configs configs/digits/digitsnet.py --evaluate --checkpoint "$OUT/dgc.dgcz" \
  --run-dir "$OUT/dgc"
echo "[demo] table: $OUT/table.md, plots: $OUT/*.png, TensorBoard: .venv/bin/tensorboard --logdir $OUT"
