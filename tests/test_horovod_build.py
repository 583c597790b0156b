"""The compiled Horovod works: PyTorch + Gloo available, and real 2-process collectives give exact results;
scripts/setup.sh --check names what the NCCL variant's build would lack."""
import os
import shutil
import subprocess

import pytest

from conftest import HOROVODRUN, ROOT, horovodrun


def test_check_build_lists_pytorch_and_gloo():
    out = subprocess.run([str(HOROVODRUN), "--check-build"], capture_output=True, text=True, check=True).stdout
    assert "[X] PyTorch" in out and "[X] Gloo" in out


def test_two_process_collectives():
    result = horovodrun(2, ["tests/mp/collectives.py"], timeout=120)
    assert result.stdout.count("collectives ok") == 2


def setup_check(**env):
    """``bash scripts/setup.sh --check`` with ``env`` added: checks the variant's prerequisites, builds nothing."""
    return subprocess.run(["bash", str(ROOT / "scripts" / "setup.sh"), "--check"], cwd=ROOT,
                          env={**os.environ, **env}, capture_output=True, text=True, timeout=120)


def test_nccl_check_names_the_missing_nvcc_and_nccl():
    result = setup_check(HOROVOD_GPU_OPERATIONS="NCCL", HOROVOD_CUDA_HOME="/nonexistent/cuda",
                         HOROVOD_NCCL_HOME="/nonexistent/nccl")
    assert result.returncode == 1, result.stdout + result.stderr
    assert "nvcc not found at /nonexistent/cuda/bin/nvcc (from HOROVOD_CUDA_HOME=/nonexistent/cuda)" in result.stderr
    assert "nccl.h not found in /nonexistent/nccl/include (from HOROVOD_NCCL_HOME=/nonexistent/nccl)" in result.stderr
    assert "the nccl variant cannot be built: 2 prerequisite(s) missing" in result.stderr


def test_check_refuses_an_unknown_variant():
    result = setup_check(HOROVOD_GPU_OPERATIONS="MPI")
    assert result.returncode == 1 and "HOROVOD_GPU_OPERATIONS=MPI" in result.stderr, result.stderr


@pytest.mark.skipif(not (shutil.which("nvcc") or os.path.exists("/usr/local/cuda/bin/nvcc")), reason="no CUDA toolkit")
def test_nccl_check_reports_the_toolkit_nccl_and_torch_it_would_build_with():
    """Where a CUDA toolkit is installed (torch's NCCL comes with its pip package nvidia-nccl-cu1x)."""
    result = setup_check(HOROVOD_GPU_OPERATIONS="nccl")
    assert result.returncode == 0, result.stdout + result.stderr
    for found in ("found: nvcc ", "found: NCCL 2.", "found: torch built with CUDA", "prerequisites are present"):
        assert found in result.stdout, (found, result.stdout)
