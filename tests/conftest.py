"""Shared test helpers: launching real multi-process Horovod jobs."""
import os
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
HOROVODRUN = pathlib.Path(sys.executable).parent / "horovodrun"


def horovodrun(np, args, timeout=300, cwd=ROOT, check=True):
    """Run ``horovodrun -np N -H localhost:N --gloo python ARGS``; return the completed process."""
    cmd = [str(HOROVODRUN), "-np", str(np), "-H", f"localhost:{np}", "--gloo",
           sys.executable, *[str(a) for a in args]]
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    result = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        pytest.fail(f"{' '.join(cmd)} exited {result.returncode}\n--- stdout\n{result.stdout[-6000:]}\n"
                    f"--- stderr\n{result.stderr[-6000:]}")
    return result
