"""Patch an unpacked Horovod 0.28.1 source tree so it builds against torch 2.x (CPU, or with --gpu the NCCL
variant against CUDA 12/13).

Edits, each checked to apply exactly once (the script fails loudly if the source differs):
  1. top-level CMakeLists.txt: C++14 -> C++20 (torch >= 2.10 headers need C++20);
  2. horovod/torch/CMakeLists.txt: the same for the torch extension;
  3. cmake/Modules/FindPytorch.cmake: a CUDA build of torch only means a CUDA build of Horovod when GPU
     operations were asked for (HOROVOD_GPU_OPERATIONS / HOROVOD_GPU_ALLREDUCE); otherwise the
     configure step hunts for cudart because /usr/local/cuda exists.
With --gpu (the GPU variant only; a CPU build compiles none of these files):
  4. horovod/common/ops/cuda/CMakeLists.txt: the CUDA kernels in C++17 instead of C++11 (CUDA 13's headers
     and libcu++ need C++17; nvcc 11+ accepts it).
Read from the 0.28.1 source, not from a build: torch's CUDA API that Horovod's extension uses
(c10::cuda::getCurrentCUDAStream, C10_CUDA_CHECK, c10/cuda/CUDAGuard.h, CUDAStream's conversion to
cudaStream_t) is unchanged in torch 2.x, and its CUDA code uses nothing that CUDA 13 removed (no
cudaDeviceProp fields, texture references or non-sync warp shuffles; NVTX is the header-only nvtx3).
Usage: python scripts/patch_horovod.py [--gpu] SRC_DIR   (idempotent: an already patched tree is left as is)
"""
import pathlib
import sys

MARKER = "# dgc: CPU build unless GPU operations were requested"

PATCHES = [
    ("CMakeLists.txt",
     "set(CMAKE_CXX_STANDARD 14)\nset(CMAKE_CXX_STANDARD_REQUIRED ON)",
     "set(CMAKE_CXX_STANDARD 20)\nset(CMAKE_CXX_STANDARD_REQUIRED ON)"),
    ("horovod/torch/CMakeLists.txt",
     'if(NOT Pytorch_VERSION VERSION_LESS "1.5.0")\n    set(CMAKE_CXX_STANDARD 14)',
     'if(NOT Pytorch_VERSION VERSION_LESS "1.5.0")\n    set(CMAKE_CXX_STANDARD 20)'),
    ("cmake/Modules/FindPytorch.cmake",
     'string(TOUPPER "${Pytorch_CUDA}" Pytorch_CUDA)\n',
     'string(TOUPPER "${Pytorch_CUDA}" Pytorch_CUDA)\n'
     f"{MARKER}\n"
     "if(NOT DEFINED ENV{HOROVOD_GPU_OPERATIONS} AND NOT DEFINED ENV{HOROVOD_GPU_ALLREDUCE})\n"
     "    set(Pytorch_CUDA FALSE)\n"
     "endif()\n"),
]

GPU_PATCHES = [
    ("horovod/common/ops/cuda/CMakeLists.txt",
     "set(CMAKE_CUDA_STANDARD 11)\n",
     "set(CMAKE_CUDA_STANDARD 17)\n"),
]


def patch(src: pathlib.Path, gpu: bool = False) -> None:
    for rel, old, new in PATCHES + (GPU_PATCHES if gpu else []):
        path = src / rel
        if not path.is_file():
            sys.exit(f"patch_horovod: {path} not found; is {src} an unpacked horovod-0.28.1 source tree?")
        text = path.read_text()
        if text.count(new) == 1:
            print(f"patch_horovod: {rel}: already patched")
            continue
        if text.count(old) != 1:
            sys.exit(f"patch_horovod: {rel}: expected exactly one occurrence of\n{old}\n"
                     f"found {text.count(old)}; the Horovod source differs from 0.28.1, refusing to guess")
        path.write_text(text.replace(old, new))
        print(f"patch_horovod: {rel}: patched")


if __name__ == "__main__":
    args = sys.argv[1:]
    gpu = "--gpu" in args
    args = [a for a in args if a != "--gpu"]
    if len(args) != 1:
        sys.exit("usage: python scripts/patch_horovod.py [--gpu] SRC_DIR")
    patch(pathlib.Path(args[0]), gpu)
