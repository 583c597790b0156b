"""Patch an unpacked Horovod 0.28.1 source tree so it builds against torch 2.x on a CPU machine.

Three edits, each checked to apply exactly once (the script fails loudly if the source differs):
  1. top-level CMakeLists.txt: C++14 -> C++20 (torch >= 2.10 headers need C++20);
  2. horovod/torch/CMakeLists.txt: the same for the torch extension;
  3. cmake/Modules/FindPytorch.cmake: a CUDA build of torch only means a CUDA build of Horovod when GPU
     operations were asked for (HOROVOD_GPU_OPERATIONS / HOROVOD_GPU_ALLREDUCE); otherwise the
     configure step hunts for cudart because /usr/local/cuda exists.
The NCCL variant (HOROVOD_GPU_OPERATIONS=NCCL) needs no further edit: torch's CUDA API that Horovod's
extension uses (c10::cuda::getCurrentCUDAStream, C10_CUDA_CHECK, c10/cuda/CUDAGuard.h) is unchanged in torch
2.x, its CUDA code uses nothing CUDA 13 removed (NVTX is the header-only nvtx3), and its kernels compile
with nvcc 13.0 as they are (C++11); scripts/setup.sh supplies what its CMake cannot find by itself (pip's
NCCL has only libnccl.so.2). Built so and imported (hvd.nccl_built(), hvd.cuda_built()) on a machine without
a GPU: nvcc 13.0, NCCL 2.30.7 from pip, torch 2.14+cu130, 2026-12-02; its collectives have not run on a GPU.
Usage: python scripts/patch_horovod.py SRC_DIR   (idempotent: an already patched tree is left as is)
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


def patch(src: pathlib.Path) -> None:
    for rel, old, new in PATCHES:
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
    if len(sys.argv) != 2:
        sys.exit("usage: python scripts/patch_horovod.py SRC_DIR")
    patch(pathlib.Path(sys.argv[1]))
