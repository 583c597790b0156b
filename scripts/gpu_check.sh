#!/usr/bin/env bash
# The GPU check: one command a session with one GPU runs as it is, in at most 9 minutes on one H200.
#   bash scripts/gpu_check.sh OUTDIR            run every stage, results into OUTDIR (8 files at most)
#   bash scripts/gpu_check.sh --dry-run OUTDIR  list every stage with its command and check that what it needs
#                                               is present; executes nothing, writes nothing (CI runs this)
# Stages, each under its own timeout inside one time budget (GPU_CHECK_BUDGET_S, default 540 s); a stage that
# fails or times out is reported and the next one runs; the exit status is 1 if any stage failed:
#   env       the GPU, torch, CUDA and NCCL versions (nvidia-smi, torch)
#   install   the wheels carried in GPU_CHECK_WHEELS (default .whl/: tensorboardX, which train.py logs with)
#             into a --target folder put on PYTHONPATH; offline (--no-index --no-deps). Horovod is not needed:
#             every stage uses the torch backend.
#   data      CIFAR-10 from the carried JPEG archive GPU_CHECK_DATA (default data/cifar10-jpeg.tar.gz,
#             19 MB, checksummed) into data/cifar10 (scripts/get_cifar10.sh)
#   tests     the CUDA test subset: pytest -k cuda over the test files that take a device or mention CUDA
#             (every device-parametrised test's [cuda] case, and the CUDA-only checks such as DGC
#             decompression run twice on CUDA giving the same bits as each other and as the CPU); files that
#             import dgc.horovod (its DistributedOptimizer imports horovod.torch) are left out, and named,
#             where Horovod is not installed
#   replicas  a 2-rank DGC train.py run on the GPU (5% of CIFAR-10, one epoch) comparing every parameter and
#             integer buffer across the ranks after every step (train.check_replicas_every=1): bitwise
#             replica identity, or train.py exits 2 naming the step
#   input     scripts/bench_input.py (loader images/s beside training images/s), when present
#   bench     scripts/bench_compression.py --device cuda: DGC selection vs torch.topk vs a device copy, and
#             the compress side with momentum memory vs copy_, then every compressor of configs/compression/
#   train     train.py, CIFAR-10 ResNet-20, 2 ranks on the one GPU, torch backend, dense then DGC
#             (GPU_CHECK_DGC_CONFIGS, default configs/dgc/wm5.py), the full 200-epoch schedule for as many
#             epochs as the minutes left allow (half each; every epoch is checkpointed under GPU_CHECK_WORK,
#             default runs/gpu_check, and metrics.json rewritten), then a summary table of images/s and test
#             accuracy per epoch. The 2 ranks use Gloo with CUDA tensors (train.dist_backend=gloo): NCCL refuses
#             two ranks on one device, so these figures are Gloo's (collectives staged through the host), not
#             NCCL's.
# OUTDIR receives: summary.md (stages, environment, the per-epoch table), gpu_check.log (env, install, data,
# replicas, input), tests.log, bench_compression.md, train_dense.log, train_dgc.log, metrics_dense.json,
# metrics_dgc.json.
#
# On this workplace's device tool (the call sends the checkout plus the carried ignored paths, 64 MiB in all),
# prepare once in the checkout that holds this script:
#   mkdir -p .whl data
#   .venv/bin/python -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#       --platform manylinux2014_x86_64 -d .whl tensorboardX==2.6.5     # its needs (numpy, packaging,
#                                                                       # protobuf) are there already
#   cp ../shared/data/cifar10-jpeg.tar.gz data/                        # 19 MB
# then call the tool's run with
#   command:   PYTHONUNBUFFERED=1 bash scripts/gpu_check.sh "$OUT"
#   carry:     [".whl", "data/cifar10-jpeg.tar.gz"]
#   timeout_s: 600
# Environment: PYTHON (default python3, the one holding torch), GPU_CHECK_BUDGET_S, GPU_CHECK_WHEELS,
# GPU_CHECK_DATA, GPU_CHECK_SITE (default $TMPDIR/dgc-gpu-site), GPU_CHECK_WORK, GPU_CHECK_DGC_CONFIGS.
set -uo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT" || exit 1
usage="usage: bash scripts/gpu_check.sh [--dry-run] OUTDIR"
DRY=0
OUTDIR=
for arg in "$@"; do
  case $arg in
    --dry-run) DRY=1 ;;
    -h|--help) sed -n '2,/^set -uo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    -*) echo "gpu_check: error: unknown option $arg; $usage" >&2; exit 2 ;;
    *) [ -z "$OUTDIR" ] || { echo "gpu_check: error: two OUTDIRs ($OUTDIR, $arg); $usage" >&2; exit 2; }
       OUTDIR=$arg ;;
  esac
done
[ -n "$OUTDIR" ] || { echo "gpu_check: error: no OUTDIR given (the folder for the results); $usage" >&2; exit 2; }

PY=${PYTHON:-python3}
BUDGET_S=${GPU_CHECK_BUDGET_S:-540}
WHEELS=${GPU_CHECK_WHEELS:-.whl}
ARCHIVE=${GPU_CHECK_DATA:-data/cifar10-jpeg.tar.gz}
SITE=${GPU_CHECK_SITE:-${TMPDIR:-/tmp}/dgc-gpu-site}
WORK=${GPU_CHECK_WORK:-runs/gpu_check}
DGC_CONFIGS=${GPU_CHECK_DGC_CONFIGS:-configs/dgc/wm5.py}
MIN_TRAIN_S=60
START=$(date +%s)

problems=0
check() {  # what, status (ok | missing | warn), detail
  printf 'check  %-44s %s\n' "$1" "$2${3:+: $3}"
  [ "$2" != missing ] || problems=$((problems + 1))
}

# --- what the stages need ---------------------------------------------------------------------------------
[[ $BUDGET_S =~ ^[0-9]+$ ]] || { echo "gpu_check: error: GPU_CHECK_BUDGET_S=$BUDGET_S must be whole seconds" >&2; exit 2; }
# one probe of the Python: torch's version and CUDA, then whether tensorboardX and Horovod are importable
probe='import importlib.util as u, torch
print(torch.__version__, "cuda", torch.cuda.is_available(), torch.version.cuda)
print(int(u.find_spec("tensorboardX") is not None), int(u.find_spec("horovod") is not None))'
have_cuda=0 have_tbx=0 have_horovod=0
if found=$("$PY" -c "$probe" 2>&1); then
  torch_info=$(head -1 <<<"$found")
  read -r have_tbx have_horovod <<<"$(tail -1 <<<"$found")"
  [[ $torch_info == *" cuda True "* ]] && have_cuda=1
  check "python with torch ($PY)" ok "$torch_info"
else
  torch_info="no torch"
  check "python with torch ($PY)" missing "$(tail -1 <<<"$found"); set PYTHON=/path/to/python3 holding torch"
fi
for tool in timeout tar sha256sum; do
  if command -v "$tool" >/dev/null; then check "$tool" ok; else check "$tool" missing "not on PATH"; fi
done
if [ $DRY = 0 ] && [ $have_cuda = 0 ]; then
  check "a CUDA device" missing "torch.cuda.is_available() is False (on a CPU machine use --dry-run)"
fi
wheels=()
if [ -d "$WHEELS" ]; then
  mapfile -t wheels < <(find "$WHEELS" -maxdepth 1 -type f -name '*.whl' | sort)
fi
if [ ${#wheels[@]} -gt 0 ]; then
  check "carried wheels ($WHEELS)" ok "$(for w in "${wheels[@]}"; do basename "$w"; done | tr '\n' ' ')"
  printf '%s\n' "${wheels[@]}" | grep -qi '/tensorboardx-' \
    || [ "$have_tbx" = 1 ] || check "tensorboardX" missing "neither importable nor among the wheels in $WHEELS"
elif [ -n "${GPU_CHECK_WHEELS:-}" ]; then
  check "carried wheels ($WHEELS)" missing "GPU_CHECK_WHEELS names a folder without wheels (or none at all)"
elif [ "$have_tbx" = 1 ]; then
  check "carried wheels ($WHEELS)" ok "none, tensorboardX is importable already"
else
  check "carried wheels ($WHEELS)" missing "tensorboardX is not importable: carry a .whl/ holding tensorboardX-*.whl"
fi
if [ -f "$ARCHIVE" ]; then
  check "CIFAR-10" ok "archive $ARCHIVE ($(du -h "$ARCHIVE" | cut -f1))"
elif [ -z "${GPU_CHECK_DATA:-}" ] && [ -f data/cifar10/.complete ]; then
  check "CIFAR-10" ok "data/cifar10 extracted already"
else
  check "CIFAR-10" missing "no archive at $ARCHIVE (carry data/cifar10-jpeg.tar.gz, or set GPU_CHECK_DATA)"
fi
test_files=()
needs_horovod=()
while read -r file; do      # files of device-parametrised or CUDA tests; those importing dgc.horovod need Horovod
  if [ "$have_horovod" = 0 ] && grep -qE '^(import|from) (dgc\.horovod|horovod)' "$file"; then
    needs_horovod+=("$file")
  else
    test_files+=("$file")
  fi
done < <(grep -lE 'cuda|\bdevice\b' tests/test_*.py 2>/dev/null | sort)
read -r -a dgc_configs <<<"$DGC_CONFIGS"
for file in train.py scripts/bench_compression.py scripts/get_cifar10.sh tests/conftest.py configs/cifar/resnet20.py \
            "${dgc_configs[@]}"; do
  if [ -f "$file" ]; then check "$file" ok; else check "$file" missing "not in the checkout"; fi
done
if [ ${#test_files[@]} -gt 0 ]; then
  check "device-parametrised test files" ok "${test_files[*]}"
else
  check "device-parametrised test files" missing "no tests/test_*.py takes a device (or needs no Horovod)"
fi
if [ ${#needs_horovod[@]} -gt 0 ]; then
  check "test files that import dgc.horovod" warn "not run, Horovod is not installed here: ${needs_horovod[*]}"
fi
if grep -q "dist_backend" configs/__init__.py && grep -q "train.device" configs/__init__.py; then
  check "train.device, train.dist_backend" ok "configs/__init__.py"
else
  check "train.device, train.dist_backend" missing "not in configs/__init__.py; the replicas and train stages need them"
fi
if [ -f scripts/bench_input.py ]; then
  check "scripts/bench_input.py" ok
else
  check "scripts/bench_input.py" warn "absent (merged later): the input stage is skipped"
fi
if [ $DRY = 0 ]; then
  if command -v nvidia-smi >/dev/null; then check nvidia-smi ok; else check nvidia-smi warn "not on PATH"; fi
fi

# --- the stages -------------------------------------------------------------------------------------------
DIST="train.device=cuda train.dist_backend=gloo"
TRAIN="$PY -m torch.distributed.run --standalone --nproc-per-node 2 train.py --backend torch --configs configs/cifar/resnet20.py"
names=(env install data tests replicas input bench train)
declare -A timeouts=([env]=30 [install]=30 [data]=60 [tests]=150 [replicas]=90 [input]=40 [bench]=90 [train]=rest)
declare -A logs=([env]=gpu_check.log [install]=gpu_check.log [data]=gpu_check.log [tests]=tests.log
                 [replicas]=gpu_check.log [input]=gpu_check.log [bench]=bench_compression.md)
declare -A commands=(
  [env]="nvidia-smi; $PY -c 'import torch; print(\"torch\", torch.__version__, \"CUDA\", torch.version.cuda, \"NCCL\", torch.cuda.nccl.version(), torch.cuda.get_device_name(0))'"
  [install]="mkdir -p $SITE && $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target $SITE $WHEELS/*.whl && $PY -c 'import tensorboardX; print(\"installed tensorboardX\", tensorboardX.__version__, \"from $WHEELS into $SITE (on PYTHONPATH)\")'"
  [data]="ARCHIVE=$ARCHIVE bash scripts/get_cifar10.sh data/cifar10"
  [tests]="$PY -m pytest -q -rs -p no:cacheprovider --timeout 120 -k cuda ${test_files[*]}"
  [replicas]="$TRAIN $DGC_CONFIGS $DIST train.num_epochs=1 data.train_fraction=0.05 data.test_fraction=0.1 train.check_replicas_every=1 --run-dir $WORK/replicas"
  [input]="$PY scripts/bench_input.py --configs configs/cifar/resnet20.py $DIST"
  [bench]="$PY scripts/bench_compression.py --device cuda --min-exp 16 --max-exp 26 --repeats 10 --family-exps 20,24 --family-repeats 3"
  [train]="$TRAIN $DIST --run-dir $WORK/dense  (then the same with $DGC_CONFIGS --run-dir $WORK/dgc)"
)

if [ $DRY = 1 ]; then
  echo "gpu_check: dry run: nothing is executed; budget $BUDGET_S s; results would go to $OUTDIR"
  i=0
  for name in "${names[@]}"; do
    i=$((i + 1))
    limit=${timeouts[$name]}
    [ "$limit" = rest ] && limit="what is left of the budget, half dense and half DGC, at least $MIN_TRAIN_S s"
    [[ $limit =~ ^[0-9]+$ ]] && limit="$limit s"
    note=
    [ "$name" = input ] && [ ! -f scripts/bench_input.py ] && note=" [skipped: scripts/bench_input.py absent]"
    [ "$name" = train ] && note=" [2 ranks on one GPU: Gloo with CUDA tensors, since NCCL refuses two ranks on one device]"
    printf 'stage %d/%d %s (timeout %s)%s\n    %s\n' "$i" "${#names[@]}" "$name" "$limit" "$note" "${commands[$name]}"
  done
  if [ $problems -gt 0 ]; then
    echo "gpu_check: error: $problems thing(s) missing (the 'missing' lines above)" >&2
    exit 1
  fi
  echo "gpu_check: dry run ok: every stage's needs are present"
  exit 0
fi

if [ $problems -gt 0 ]; then
  echo "gpu_check: error: $problems thing(s) missing (the 'missing' lines above); nothing was run" >&2
  exit 1
fi
mkdir -p "$OUTDIR" || exit 1
OUTDIR=$(cd "$OUTDIR" && pwd)
rm -rf "$WORK"
mkdir -p "$WORK"
export PYTHONPATH="$SITE:$ROOT${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 OMP_NUM_THREADS=${OMP_NUM_THREADS:-4}
left() { echo $((BUDGET_S - ($(date +%s) - START))); }
declare -A status
failed=0
run_stage() {  # name, timeout seconds, log file, command
  local name=$1 limit=$2 log=$3 cmd=$4 begun rc
  [ "$limit" -le "$(left)" ] || limit=$(left)
  if [ "$limit" -lt 5 ]; then status[$name]="not run (budget spent)"; failed=1; return; fi
  begun=$(date +%s)
  printf '\n=== stage %s (timeout %s s, %s s of the budget left): %s\n' "$name" "$limit" "$(left)" "$cmd" | tee -a "$OUTDIR/$log"
  timeout --kill-after=10 "$limit" bash -c "$cmd" 2>&1 | tee -a "$OUTDIR/$log"
  rc=${PIPESTATUS[0]}
  case $rc in
    0) status[$name]="ok" ;;
    124|137) status[$name]="TIMEOUT after $limit s"; failed=1 ;;
    *) status[$name]="FAILED (exit $rc)"; failed=1 ;;
  esac
  status[$name]="${status[$name]}, $(( $(date +%s) - begun )) s"
  echo "=== stage $name: ${status[$name]}" | tee -a "$OUTDIR/$log"
}

for name in env install data tests replicas input bench; do
  if [ "$name" = input ] && [ ! -f scripts/bench_input.py ]; then status[input]="skipped (scripts/bench_input.py absent)"; continue; fi
  if [ "$name" = install ] && [ ${#wheels[@]} -eq 0 ]; then status[install]="nothing to install (tensorboardX importable)"; continue; fi
  run_stage "$name" "${timeouts[$name]}" "${logs[$name]}" "${commands[$name]}"
done

echo "NOTE: the 2 ranks share one GPU through Gloo with CUDA tensors (train.dist_backend=gloo): NCCL refuses two ranks on one device."
rest=$(( $(left) - 15 ))
if [ "$rest" -lt "$MIN_TRAIN_S" ]; then
  status[train]="not run: $rest s left, under $MIN_TRAIN_S s"
  failed=1
else
  run_stage train_dense $((rest / 2)) train_dense.log "$TRAIN $DIST --run-dir $WORK/dense"
  run_stage train_dgc $(( $(left) - 15 )) train_dgc.log "$TRAIN $DGC_CONFIGS $DIST --run-dir $WORK/dgc"
  for variant in dense dgc; do
    [ -f "$WORK/$variant/metrics.json" ] && cp "$WORK/$variant/metrics.json" "$OUTDIR/metrics_$variant.json"
  done
fi

{
  echo "# GPU check, $(date -u '+%Y-%m-%d %H:%M UTC'), $(( $(date +%s) - START )) s of a $BUDGET_S s budget"
  echo
  echo "GPU: $(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null || echo none found);"\
       "torch $torch_info"
  echo
  echo "| stage | result |"
  echo "| :--- | :--- |"
  for name in env install data tests replicas input bench train_dense train_dgc train; do
    [ -n "${status[$name]:-}" ] && echo "| $name | ${status[$name]} |"
  done
  echo
  echo "Training: CIFAR-10 ResNet-20, 2 ranks on one GPU, torch backend over Gloo with CUDA tensors (NCCL refuses"
  echo "two ranks on one device), the 200-epoch schedule cut short by the time budget; DGC: $DGC_CONFIGS."
  echo
  "$PY" - "$OUTDIR" <<'EOF'
import json, pathlib, sys
out = pathlib.Path(sys.argv[1])
print("| run | epoch | images/s | test top-1 % | epoch s | compression ratio |")
print("| :--- | ---: | ---: | ---: | ---: | ---: |")
for variant in ("dense", "dgc"):
    path = out / f"metrics_{variant}.json"
    if not path.is_file():
        print(f"| {variant} | no finished epoch | | | | |")
        continue
    for h in json.loads(path.read_text())["history"]:
        print(f"| {variant} | {h['epoch']} | {h['images_per_s']:.0f} | {h['test_top1']:.2f} | {h['epoch_time_s']:.1f} "
              f"| {h['compression_ratio']:.4f} |")
EOF
} > "$OUTDIR/summary.md"
echo
cat "$OUTDIR/summary.md"
exit $failed
