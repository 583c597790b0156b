"""scripts/bench_network.py builds namespaces, links and workers and always removes them: after a table,
after a failing cell and after Ctrl-C. Needs root (the benchmark's own requirement); skipped otherwise."""
import os
import pathlib
import signal
import subprocess
import sys
import time

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
import bench_network  # noqa: E402

root_only = pytest.mark.skipif(os.geteuid() != 0, reason="bench_network.py needs root (namespaces, veth, tc)")
TINY = ["--models", "tiny", "--rates", "100mbit", "--workers", "2"]


def leftovers():
    workers = subprocess.run(["pgrep", "-f", "bench_network.py --worker"], capture_output=True, text=True).stdout
    return bench_network.namespaces(), bench_network.links(), workers.split()


def bench(*args, **kwargs):
    return subprocess.Popen([sys.executable, str(ROOT / "scripts" / "bench_network.py"), *TINY, *args], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kwargs)


def test_refuses_to_run_without_root(monkeypatch, capsys):
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    assert bench_network.main(TINY) == 2
    assert "needs root" in capsys.readouterr().err


@root_only
def test_table_then_nothing_left_behind():
    out, err = bench("--methods", "limit,dgc,dgc_fused,ddp_dgc", "--steps", "tiny=2").communicate(timeout=240)
    assert "| 2 | tiny | 100mbit |" in out, err[-2000:]
    for label in ("DGC 0.001 fused+compact |", "DGC fused, DDP hook |"):     # the DDP hook: torch over the links
        fused_row = next(line for line in out.splitlines() if label in line)
        assert fused_row.rstrip(" |").endswith("| 2.0"), fused_row      # one allgather + one allreduce per step
    assert leftovers() == ([], [], [])


@root_only
def test_a_failing_cell_leaves_nothing_behind():
    proc = bench("--methods", "dense", "--steps", "tiny=100000", "--timeout", "20")
    _, err = proc.communicate(timeout=240)
    assert proc.returncode != 0 and "ran past 20.0 s" in err, err[-2000:]
    assert leftovers() == ([], [], [])


@root_only
def test_ctrl_c_leaves_nothing_behind():
    # a Ctrl-C reaches the bench even where pytest itself runs with SIGINT ignored (a shell's background job)
    proc = bench("--methods", "dense", "--steps", "tiny=100000",
                 preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 120
    while not leftovers()[2] and time.monotonic() < deadline:       # wait until the workers run
        time.sleep(0.5)
    assert leftovers()[0], "the namespaces should exist while the workers run"
    proc.send_signal(signal.SIGINT)
    proc.communicate(timeout=60)
    assert proc.returncode != 0
    assert leftovers() == ([], [], [])
