"""How long a job takes to end when one worker dies: a digits DGC run under horovodrun, ``kill -9`` of one
rank's process after a checkpoint, seconds until the launcher has ended every process; ``--trials`` times,
each trial resuming the run directory the last one left.

Usage:
  .venv/bin/python scripts/bench_kill.py [--trials 3] [--rank 1] [--run-dir /tmp/dgc-kill]
"""
import argparse
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent
BIN = pathlib.Path(sys.executable).parent


def worker_pid(rank, marker):
    """The pid of Horovod rank ``rank``'s train.py process whose command line contains ``marker``."""
    for entry in os.listdir("/proc"):
        try:
            cmdline = pathlib.Path(f"/proc/{entry}/cmdline").read_bytes()
            environ = pathlib.Path(f"/proc/{entry}/environ").read_bytes().split(b"\0")
        except (OSError, ValueError):
            continue
        if b"train.py" in cmdline and marker.encode() in cmdline and f"HOROVOD_RANK={rank}".encode() in environ:
            return int(entry)
    return None


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=3)
    parser.add_argument("--rank", type=int, default=1, choices=(0, 1), help="the rank to kill (of 2)")
    parser.add_argument("--run-dir", default="/tmp/dgc-kill", help="a scratch run directory (emptied first)")
    args = parser.parse_args(argv)
    if args.trials < 1:
        parser.error(f"--trials {args.trials} must be >= 1")
    run = pathlib.Path(args.run_dir)
    shutil.rmtree(run, ignore_errors=True)
    cmd = [str(BIN / "horovodrun"), "-np", "2", "-H", "localhost:2", "--gloo", sys.executable, "train.py",
           "--configs", "configs/digits/digitsnet.py", "configs/dgc/wm5.py", "train.num_epochs=1000",
           "--run-dir", str(run)]
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    for trial in range(args.trials):
        launcher = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                    start_new_session=True)
        try:
            target = run / "checkpoints" / f"rank{args.rank}.epoch{3 * trial + 3}.pt"
            deadline = time.time() + 300
            while not target.exists():
                if time.time() > deadline or launcher.poll() is not None:
                    raise RuntimeError(f"bench_kill.py: no checkpoint {target} appeared")
                time.sleep(0.02)
            time.sleep(0.3)         # into the next epoch
            os.kill(worker_pid(args.rank, str(run)), signal.SIGKILL)
            killed = time.time()
            launcher.wait(timeout=300)
            left = worker_pid(1 - args.rank, str(run))
            print(f"trial {trial + 1}: kill -9 of rank {args.rank} after epoch {3 * trial + 3}: the job ended "
                  f"{time.time() - killed:.2f} s later (launcher exit {launcher.returncode}; other rank "
                  f"{'still running' if left else 'gone'})", flush=True)
        finally:
            if launcher.poll() is None:
                os.killpg(launcher.pid, signal.SIGKILL)
                launcher.wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
