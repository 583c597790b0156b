#!/usr/bin/env bash
# Idempotent setup: .venv with requirements.txt, then Horovod 0.28.1 (PyTorch + Gloo) built from the
# release source against the installed torch, patched by scripts/patch_horovod.py. The built wheel is
# cached outside the repo, keyed by Horovod, torch and Python versions and the CPU/NCCL variant, so a
# second setup on the same machine installs it in seconds.
#   HOROVOD_GPU_OPERATIONS=NCCL bash scripts/setup.sh   builds the GPU (NCCL) variant.
#   VENV=/path, DGC_CACHE=/path, PYTHON=python3.x       override the defaults below.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VENV=${VENV:-$ROOT/.venv}
PYTHON=${PYTHON:-python3}
CACHE=${DGC_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/dgc}
HOROVOD_VERSION=0.28.1

say() { echo "[setup] $*"; }
die() { echo "[setup] error: $*" >&2; exit 1; }
need() { command -v "$1" >/dev/null 2>&1 || die "$1 not found on PATH; $2"; }

need "$PYTHON" "install Python 3.9+ (with the venv module) or set PYTHON=/path/to/python3"
"$PYTHON" -c 'import sys, venv; sys.exit(sys.version_info < (3, 9))' \
  || die "$PYTHON is older than 3.9 or lacks the venv module"

# 1. virtual environment + Python requirements (skipped when requirements.txt is unchanged).
if [ ! -x "$VENV/bin/python" ]; then
  say "creating $VENV"
  "$PYTHON" -m venv "$VENV"
fi
PY="$VENV/bin/python"
req_hash=$(sha256sum "$ROOT/requirements.txt" | cut -d' ' -f1)
if [ "$(cat "$VENV/.requirements.sha256" 2>/dev/null)" != "$req_hash" ]; then
  say "installing requirements.txt"
  "$PY" -m pip install -q --upgrade pip 2>&1 | grep -v "^WARNING: Location" || true
  "$PY" -m pip install -q -r "$ROOT/requirements.txt" 2>&1 | grep -v "^WARNING: Location" || true
  "$PY" -c 'import torch, torchvision, tensorboardX, tqdm, sklearn, matplotlib, pytest' \
    || die "requirements.txt did not install (see pip's output above)"
  echo "$req_hash" > "$VENV/.requirements.sha256"
else
  say "requirements.txt unchanged since the last install"
fi

# 2. Horovod: the variant follows HOROVOD_GPU_OPERATIONS, the cache key the exact versions it links.
if [ -n "${HOROVOD_GPU_OPERATIONS:-}" ]; then variant=$(echo "$HOROVOD_GPU_OPERATIONS" | tr 'A-Z' 'a-z'); else variant=cpu; fi
torch_version=$("$PY" -c 'import torch; print(torch.__version__.split("+")[0])')
py_tag=$("$PY" -c 'import sys; print(f"py{sys.version_info[0]}{sys.version_info[1]}")')
key="horovod-$HOROVOD_VERSION-torch$torch_version-$py_tag-$variant"
wheel_dir="$CACHE/wheels/$key"

if [ "$(cat "$VENV/.horovod-build" 2>/dev/null)" = "$key" ] && "$PY" -c 'import horovod.torch' 2>/dev/null; then
  say "Horovod already installed ($key)"
  exit 0
fi

if ! ls "$wheel_dir"/horovod-*.whl >/dev/null 2>&1; then
  need cmake "install CMake 3.13+ (Debian: apt-get install cmake)"
  need g++ "install a C++20 compiler (Debian: apt-get install g++)"
  need make "install make (Debian: apt-get install make)"
  say "building $key (a few minutes on 2 cores; cached in $wheel_dir afterwards)"
  build=$(mktemp -d "${TMPDIR:-/tmp}/dgc-horovod-build.XXXXXX")
  trap 'rm -rf "$build"' EXIT
  src_archive="$CACHE/src/horovod-$HOROVOD_VERSION.tar.gz"
  if [ ! -f "$src_archive" ]; then
    mkdir -p "$CACHE/src"
    "$PY" -m pip download -q --no-deps --no-binary :all: "horovod==$HOROVOD_VERSION" -d "$build/dl" \
      || die "could not download the horovod==$HOROVOD_VERSION source archive from the package index"
    mv "$build/dl/horovod-$HOROVOD_VERSION.tar.gz" "$src_archive"
  fi
  tar xzf "$src_archive" -C "$build"
  "$PY" "$ROOT/scripts/patch_horovod.py" "$build/horovod-$HOROVOD_VERSION"
  (
    cd "$build"
    export CMAKE_POLICY_VERSION_MINIMUM=3.5 HOROVOD_WITH_PYTORCH=1 HOROVOD_WITH_GLOO=1 HOROVOD_WITHOUT_MPI=1 \
           HOROVOD_WITHOUT_TENSORFLOW=1 HOROVOD_WITHOUT_MXNET=1 MAKEFLAGS="-j$(nproc)"
    "$PY" -m pip wheel -q --no-build-isolation --no-deps -w "$build/wheel" "./horovod-$HOROVOD_VERSION" \
      > "$build/build.log" 2>&1 || { tail -40 "$build/build.log" >&2; die "Horovod build failed (log above)"; }
  )
  mkdir -p "$CACHE/wheels"
  tmp_dir=$(mktemp -d "$CACHE/wheels/.$key.XXXXXX")
  cp "$build"/wheel/horovod-*.whl "$tmp_dir/"
  rm -rf "$wheel_dir"
  mv "$tmp_dir" "$wheel_dir"
fi

say "installing $(basename "$wheel_dir"/horovod-*.whl)"
"$PY" -m pip install -q --no-deps --no-index --force-reinstall "$wheel_dir"/horovod-*.whl
build_info=$("$VENV/bin/horovodrun" --check-build)
grep -q "\[X\] PyTorch" <<<"$build_info" || die "Horovod installed without PyTorch support"
grep -q "\[X\] Gloo" <<<"$build_info" || die "Horovod installed without Gloo support"
echo "$key" > "$VENV/.horovod-build"
say "done: $(grep -E '\[X\]' <<<"$build_info" | tr -s ' ' | tr '\n' ' ')"
