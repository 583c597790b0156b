"""DGC through real Horovod processes (Gloo): equivalence with Horovod + torch SGD, exchange, conservation."""
import pytest

from conftest import horovodrun


@pytest.mark.parametrize("np", [2, 3])
def test_dgc_over_horovod(np):
    result = horovodrun(np, ["tests/mp/dgc_checks.py"], timeout=300)
    assert result.stdout.count("dgc checks ok") == np
