#!/usr/bin/env bash
# Idempotent setup: .venv with requirements.txt, then Horovod 0.28.1 (PyTorch + Gloo) built from the
# release source against the installed torch, patched by scripts/patch_horovod.py. The built wheel is
# cached outside the repo, keyed by Horovod, torch and Python versions and the CPU/NCCL variant, so a
# second setup on the same machine installs it in seconds.
#   HOROVOD_GPU_OPERATIONS=NCCL bash scripts/setup.sh   builds the GPU (NCCL) variant.
#   bash scripts/setup.sh --check                       only checks the chosen variant's prerequisites and
#                                                       prints what it found (SETUP_CHECK=1 does the same).
#   VENV=/path, DGC_CACHE=/path, PYTHON=python3.x       override the defaults below.
# The NCCL variant needs, checked before anything is built:
#   nvcc and the CUDA toolkit's headers and static runtime: HOROVOD_CUDA_HOME, else CUDA_HOME, else
#     /usr/local/cuda, else the nvcc on PATH;
#   NCCL's nccl.h and libnccl.so*: HOROVOD_NCCL_HOME (include/, lib/), or HOROVOD_NCCL_INCLUDE and
#     HOROVOD_NCCL_LIB, else the pip package nvidia-nccl-cu1x that a CUDA build of torch ships NCCL in,
#     else /usr/include and the system's library (libnccl-dev);
#   a CUDA build of torch in the venv (torch.version.cuda set).
#   HOROVOD_BUILD_CUDA_CC_LIST=90,100   compute capabilities to compile the kernels for (default: those of
#                                       the visible GPUs; with none visible, every one nvcc knows: slower).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VENV=${VENV:-$ROOT/.venv}
PYTHON=${PYTHON:-python3}
CACHE=${DGC_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/dgc}
HOROVOD_VERSION=0.28.1
CHECK=${SETUP_CHECK:-0}
for arg in "$@"; do
  case $arg in
    --check) CHECK=1 ;;
    *) echo "[setup] error: unknown argument $arg; usage: [HOROVOD_GPU_OPERATIONS=NCCL] bash scripts/setup.sh [--check]" >&2
       exit 2 ;;
  esac
done

say() { echo "[setup] $*"; }
die() { echo "[setup] error: $*" >&2; exit 1; }
need() { command -v "$1" >/dev/null 2>&1 || die "$1 not found on PATH; $2"; }

gpu_ops=${HOROVOD_GPU_OPERATIONS:-}
case ${gpu_ops^^} in
  "") variant=cpu ;;
  NCCL) variant=nccl; export HOROVOD_GPU_OPERATIONS=NCCL ;;
  *) die "HOROVOD_GPU_OPERATIONS=$gpu_ops: this setup builds the CPU variant (unset) or NCCL (Horovod's MPI GPU operations need MPI, which is not built)" ;;
esac

missing=()
found() { say "found: $*"; }
lack() { missing+=("$*"); }

cuda_prerequisites() {  # PY: find nvcc, the toolkit, NCCL and torch's CUDA; export what Horovod's build reads
  local py=$1 nvcc='' home='' where torch_cuda torch_version capabilities='' inc='' lib='' nccl_pip version shim
  if [ -n "${HOROVOD_CUDA_HOME:-}" ]; then where="HOROVOD_CUDA_HOME=$HOROVOD_CUDA_HOME"; home=$HOROVOD_CUDA_HOME
  elif [ -n "${CUDA_HOME:-}" ]; then where="CUDA_HOME=$CUDA_HOME"; home=$CUDA_HOME
  elif [ -x /usr/local/cuda/bin/nvcc ]; then where="/usr/local/cuda"; home=/usr/local/cuda
  elif command -v nvcc >/dev/null; then where="PATH"; home=$(dirname "$(dirname "$(readlink -f "$(command -v nvcc)")")")
  fi
  if [ -z "$home" ]; then
    lack "nvcc not found: no HOROVOD_CUDA_HOME or CUDA_HOME, no /usr/local/cuda/bin/nvcc, none on PATH; install the CUDA toolkit and set CUDA_HOME=/path/to/cuda"
  elif [ ! -x "$home/bin/nvcc" ]; then
    lack "nvcc not found at $home/bin/nvcc (from $where); point HOROVOD_CUDA_HOME or CUDA_HOME at a CUDA toolkit"
  else
    nvcc=$home/bin/nvcc
    version=$("$nvcc" --version | grep -o 'release [0-9.]*' | cut -d' ' -f2)
    found "nvcc $version at $nvcc (from $where)"
    [ -f "$home/include/cuda_runtime.h" ] || lack "$home/include/cuda_runtime.h not found: $home is not a complete CUDA toolkit"
    compgen -G "$home/lib*/libcudart_static.a" >/dev/null || compgen -G "$home/targets/*/lib/libcudart_static.a" >/dev/null \
      || lack "libcudart_static.a not found under $home (Horovod links the static CUDA runtime)"
    export HOROVOD_CUDA_HOME=$home CUDA_HOME=$home
    cuda_version=$version
  fi
  if [ -n "${HOROVOD_NCCL_HOME:-}" ]; then
    inc=$HOROVOD_NCCL_HOME/include; lib=$HOROVOD_NCCL_HOME/lib; [ -d "$lib" ] || lib=$HOROVOD_NCCL_HOME/lib64
    where="HOROVOD_NCCL_HOME=$HOROVOD_NCCL_HOME"
  elif [ -n "${HOROVOD_NCCL_INCLUDE:-}${HOROVOD_NCCL_LIB:-}" ]; then
    inc=${HOROVOD_NCCL_INCLUDE:-}; lib=${HOROVOD_NCCL_LIB:-}; where="HOROVOD_NCCL_INCLUDE, HOROVOD_NCCL_LIB"
  elif nccl_pip=$("$py" -c 'import nvidia.nccl as n; print(list(n.__path__)[0])' 2>/dev/null) && [ -n "$nccl_pip" ]; then
    inc=$nccl_pip/include; lib=$nccl_pip/lib; where="the pip package nvidia-nccl in $VENV"
  else
    inc=/usr/include; lib=$(dirname "$(ldconfig -p 2>/dev/null | grep -o '/[^ ]*libnccl\.so[.0-9]*$' | head -1)" 2>/dev/null)
    where="the system (no HOROVOD_NCCL_HOME, no nvidia-nccl pip package)"
  fi
  if [ ! -f "$inc/nccl.h" ]; then
    lack "NCCL header nccl.h not found in ${inc:-(none)} (from $where); set HOROVOD_NCCL_HOME, or HOROVOD_NCCL_INCLUDE and HOROVOD_NCCL_LIB, or install nvidia-nccl-cu12/cu13 or libnccl-dev"
  elif ! compgen -G "$lib/libnccl.so*" >/dev/null && [ ! -f "$lib/libnccl_static.a" ]; then
    lack "NCCL library libnccl.so* not found in ${lib:-(none)} (from $where); set HOROVOD_NCCL_LIB"
  else
    version=$(awk '/^#define NCCL_(MAJOR|MINOR|PATCH) /{printf "%s%s", sep, $3; sep="."}' "$inc/nccl.h")
    found "NCCL $version: $inc/nccl.h, $lib (from $where)"
    if [ ! -e "$lib/libnccl.so" ] && [ ! -f "$lib/libnccl_static.a" ]; then
      # pip's NCCL has only libnccl.so.2; CMake's find_library(nccl) wants libnccl.so: link both in the cache
      shim=$CACHE/nccl-lib/$(echo "$lib" | sha256sum | cut -c1-12)
      if [ "$CHECK" = 1 ]; then
        say "note: $lib has no libnccl.so; the build links one in $shim"
      else
        mkdir -p "$shim"
        for so in "$lib"/libnccl.so*; do ln -sf "$so" "$shim/$(basename "$so")"; done
        ln -sf "$(ls "$lib"/libnccl.so* | head -1)" "$shim/libnccl.so"
        lib=$shim
      fi
    fi
    [ -f "$lib/libnccl_static.a" ] || export HOROVOD_NCCL_LINK=SHARED
    export HOROVOD_NCCL_INCLUDE=$inc HOROVOD_NCCL_LIB=$lib
    unset HOROVOD_NCCL_HOME
  fi
  # torch's version, its CUDA version ("" for a CPU build) and the visible GPUs' compute capabilities
  if ! torch_cuda=$("$py" -c 'import torch; print(torch.__version__, torch.version.cuda or "", ",".join(sorted(
      {"%d%d" % torch.cuda.get_device_capability(i) for i in range(torch.cuda.device_count())})))' 2>/dev/null); then
    lack "torch is not importable by $py; run bash scripts/setup.sh once (it installs requirements.txt)"
  elif read -r torch_version torch_cuda capabilities <<<"$torch_cuda" && [ -z "$torch_cuda" ]; then
    lack "torch $torch_version in $VENV is a CPU-only build (torch.version.cuda is None); install a CUDA build of torch"
  else
    found "torch built with CUDA $torch_cuda"
    if [ -n "${cuda_version:-}" ] && [ "${torch_cuda%%.*}" != "${cuda_version%%.*}" ]; then
      say "warning: nvcc is CUDA $cuda_version but torch was built with CUDA $torch_cuda (different major versions)"
    fi
    [ -n "${HOROVOD_BUILD_CUDA_CC_LIST:-}" ] || [ -z "$capabilities" ] || export HOROVOD_BUILD_CUDA_CC_LIST=$capabilities
    if [ -n "${HOROVOD_BUILD_CUDA_CC_LIST:-}" ]; then
      export CUDAARCHS=${HOROVOD_BUILD_CUDA_CC_LIST//,/;}
      found "kernels for compute capabilities $HOROVOD_BUILD_CUDA_CC_LIST (HOROVOD_BUILD_CUDA_CC_LIST)"
    else
      say "note: no GPU visible and no HOROVOD_BUILD_CUDA_CC_LIST: kernels for every compute capability nvcc knows"
    fi
  fi
}

prerequisites() {  # PY: check (and, for NCCL, export) what building the chosen variant needs; die naming what lacks
  local tool
  for tool in "cmake:install CMake 3.13+ (Debian: apt-get install cmake)" "g++:install a C++20 compiler (Debian: apt-get install g++)" \
              "make:install make (Debian: apt-get install make)"; do
    if command -v "${tool%%:*}" >/dev/null; then found "${tool%%:*} at $(command -v "${tool%%:*}")"; else lack "${tool%%:*} not found on PATH; ${tool#*:}"; fi
  done
  [ "$variant" = cpu ] || cuda_prerequisites "$1"
  if [ ${#missing[@]} -gt 0 ]; then
    printf '[setup] error: %s\n' "${missing[@]}" >&2
    die "the $variant variant cannot be built: ${#missing[@]} prerequisite(s) missing (above)"
  fi
}

if [ "$CHECK" = 1 ]; then
  say "checking the prerequisites of Horovod $HOROVOD_VERSION's $variant variant (nothing is built or installed)"
  if [ -x "$VENV/bin/python" ]; then PY="$VENV/bin/python"; found "venv $VENV"; else PY=$PYTHON; say "note: no venv at $VENV yet (setup creates it)"; fi
  prerequisites "$PY"
  say "ok: the $variant variant's prerequisites are present"
  exit 0
fi

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
if [ "$variant" != cpu ]; then       # checked (and exported) first: the CUDA version enters the cache key
  prerequisites "$PY"
  variant="nccl-cuda$cuda_version"
fi
torch_version=$("$PY" -c 'import torch; print(torch.__version__.split("+")[0])')
py_tag=$("$PY" -c 'import sys; print(f"py{sys.version_info[0]}{sys.version_info[1]}")')
key="horovod-$HOROVOD_VERSION-torch$torch_version-$py_tag-$variant"
wheel_dir="$CACHE/wheels/$key"

if [ "$(cat "$VENV/.horovod-build" 2>/dev/null)" = "$key" ] && "$PY" -c 'import horovod.torch' 2>/dev/null; then
  say "Horovod already installed ($key)"
  exit 0
fi

if ! ls "$wheel_dir"/horovod-*.whl >/dev/null 2>&1; then
  [ "$variant" != cpu ] || prerequisites "$PY"
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
[ "$variant" = cpu ] || grep -q "\[X\] NCCL" <<<"$build_info" || die "Horovod installed without NCCL support"
echo "$key" > "$VENV/.horovod-build"
say "done: $(grep -E '\[X\]' <<<"$build_info" | tr -s ' ' | tr '\n' ' ')"
