"""Shared test helpers: launching real multi-process Horovod and torchrun jobs; the devices to test on."""
import os
import pathlib
import subprocess
import sys

import pytest
import torch

ROOT = pathlib.Path(__file__).resolve().parent.parent
HOROVODRUN = pathlib.Path(sys.executable).parent / "horovodrun"
TORCHRUN = pathlib.Path(sys.executable).parent / "torchrun"
COMPRESSION_CONFIGS = sorted(p for p in (ROOT / "configs" / "compression").glob("*.py") if p.stem not in ("__init__", "auto"))
"""Every compressor's file of configs/compression/. auto.py is no compressor: train.py replaces it by one of its
candidates, which are files of this list (tests/test_auto.py)."""


def horovodrun(np, args, timeout=300, cwd=ROOT, check=True, hosts=None):
    """Run ``horovodrun -np N -H HOSTS --gloo python ARGS`` (default HOSTS: localhost:N; e.g.
    ``localhost:2,127.0.0.1:2`` makes two hosts of one machine); return the completed process."""
    cmd = [str(HOROVODRUN), "-np", str(np), "-H", hosts or f"localhost:{np}", "--gloo",
           sys.executable, *[str(a) for a in args]]
    return run_job(cmd, timeout, cwd, check)


def torchrun(np, args, timeout=300, cwd=ROOT, check=True, pythonpath=()):
    """Run ``torchrun --standalone --nproc-per-node N ARGS`` (one machine, a free rendezvous port; folders of
    ``pythonpath`` before the repository on the import path); return the completed process."""
    cmd = [str(TORCHRUN), "--standalone", "--nproc-per-node", str(np), *[str(a) for a in args]]
    return run_job(cmd, timeout, cwd, check, pythonpath)


def run_job(cmd, timeout, cwd, check, pythonpath=()):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([*map(str, pythonpath), str(ROOT)]), OMP_NUM_THREADS="1",
               PYTHONUNBUFFERED="1")
    result = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        pytest.fail(f"{' '.join(cmd)} exited {result.returncode}\n--- stdout\n{result.stdout[-6000:]}\n"
                    f"--- stderr\n{result.stderr[-6000:]}")
    return result


DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
"""The devices this machine can run the device-agnostic tests on: the CPU always, CUDA when present."""


def devices():
    """``pytest.mark.parametrize("device", devices())`` values: every device, CUDA's case present always and
    skipped with a reason where there is none (so a CPU-only run shows what it did not check)."""
    return [pytest.param(torch.device("cpu"), id="cpu"),
            pytest.param(torch.device("cuda"), id="cuda",
                         marks=pytest.mark.skipif("cuda" not in DEVICES, reason="no CUDA device"))]


@pytest.fixture(params=devices())
def device(request):
    """The device a test's tensors, models and in-process communicator live on (cpu; cuda, or skipped)."""
    return request.param
