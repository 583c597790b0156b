"""DGC through real Horovod processes (Gloo): equivalence with Horovod + torch SGD, exchange, conservation."""
import pytest

from conftest import horovodrun


@pytest.mark.parametrize("np", [2, 3])
def test_dgc_over_horovod(np):
    result = horovodrun(np, ["tests/mp/dgc_checks.py"], timeout=300)
    assert result.stdout.count("dgc checks ok") == np


def test_hierarchical_exchange_over_two_hosts_of_two_ranks():
    """Two 'hosts' of one machine (horovodrun tells them apart by name): dense within a host, DGC between;
    PowerSGD and threshold (several rounds) through the fused exchange finish with identical replicas."""
    run = lambda check: horovodrun(4, ["tests/mp/hierarchical_checks.py"], timeout=300,  # noqa: E731
                                   hosts="localhost:2,127.0.0.1:2", check=check)
    result = run(False)
    if result.returncode != 0 and "Timed out waiting 30000ms" in result.stderr:
        # Known flake (2026-12-03): in the full suite only, never alone, this job has twice hit Gloo's 30 s
        # receive timeout; one rerun, with the first failure shown, until its cause is found.
        print(f"hierarchical checks: Gloo timeout, rerunning once:\n{result.stderr[-2000:]}")
        result = run(True)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "hierarchical checks passed" in result.stdout
