"""Shared test helpers: launching real multi-process Horovod jobs."""
import os
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
HOROVODRUN = pathlib.Path(sys.executable).parent / "horovodrun"


def horovodrun(np, args, timeout=300, cwd=ROOT, check=True, hosts=None):
    """Run ``horovodrun -np N -H HOSTS --gloo python ARGS`` (default HOSTS: localhost:N; e.g.
    ``localhost:2,127.0.0.1:2`` makes two hosts of one machine); return the completed process."""
    cmd = [str(HOROVODRUN), "-np", str(np), "-H", hosts or f"localhost:{np}", "--gloo",
           sys.executable, *[str(a) for a in args]]
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    result = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        pytest.fail(f"{' '.join(cmd)} exited {result.returncode}\n--- stdout\n{result.stdout[-6000:]}\n"
                    f"--- stderr\n{result.stderr[-6000:]}")
    return result
