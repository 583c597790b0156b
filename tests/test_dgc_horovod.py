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
    result = horovodrun(4, ["tests/mp/hierarchical_checks.py"], timeout=300, hosts="localhost:2,127.0.0.1:2")
    assert "hierarchical checks passed" in result.stdout
