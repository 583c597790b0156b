"""The compressors through DDP's communication hook under real torchrun processes (Gloo): equivalence with
DDP + torch SGD at ratio 1.0 (also with gradient accumulation and unused branches), conservation, identical
replicas, skipped non-finite steps, state_dict; the hook's refusals."""
import pytest

from conftest import torchrun


@pytest.mark.parametrize("np", [2, 3])
def test_dgc_through_the_ddp_hook(np):
    result = torchrun(np, ["tests/mp/ddp_checks.py"])
    assert result.stdout.count("ddp checks ok") == np


def test_backend_benchmark_prints_both_paths_and_their_ratio():
    import subprocess
    import sys

    from conftest import ROOT
    result = subprocess.run([sys.executable, "scripts/bench_backends.py", "--steps", "1", "--batch", "4"], cwd=ROOT,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = [line for line in result.stdout.splitlines() if line.startswith("| dense") or line.startswith("| DGC")]
    assert len(rows) == 2
    for row in rows:
        horovod, ddp, ratio = (float(cell) for cell in row.strip("| ").split(" | ")[1:])
        assert horovod > 0 and ddp > 0 and ratio == pytest.approx(ddp / horovod, rel=0.1)   # printed rounded


def test_powersgd_byte_estimate_follows_the_hooks_own_rule():
    """DenseStats' estimate for configs/ddp/powersgd.py compresses exactly the matrices torch's hook does
    (its _should_compress is strict: at a compression rate equal to the minimum the matrix goes dense)."""
    import types

    import torch
    from torch.distributed.algorithms.ddp_comm_hooks.powerSGD_hook import _should_compress

    from dgc.exchange import DenseStats
    state = types.SimpleNamespace(matrix_approximation_rank=4, min_compression_rate=2)
    for shape in [(16, 16), (17, 16), (15, 16), (64, 3, 3, 3), (10, 100), (30,)]:
        p = torch.nn.Parameter(torch.zeros(shape))
        n, m = shape[0], p.numel() // shape[0]
        expected = p.numel() if p.dim() < 2 or not _should_compress(n, m, 4, 2)[0] else (n + m) * 4
        assert DenseStats([("w", p)], powersgd=state).last_exchange["values_sent"] == expected, shape


def test_the_hook_refuses_nonfinite_none():
    """None would raise on the rank with the bad gradient inside the hook while the others wait."""
    import torch

    from dgc.inprocess import InProcessGroup
    from dgc.torch import DGCHook
    net = torch.nn.Linear(4, 2)
    with pytest.raises(ValueError, match="nonfinite=None; use 'skip' or 'stop'"):
        DGCHook(net, torch.optim.SGD(net.parameters(), lr=0.1), communicator=InProcessGroup(1).communicator(0),
                nonfinite=None)
