"""The compressors through DDP's communication hook under real torchrun processes (Gloo): equivalence with
DDP + torch SGD at ratio 1.0, conservation, identical replicas, skipped non-finite steps, state_dict."""
import pytest

from conftest import torchrun


@pytest.mark.parametrize("np", [2, 3])
def test_dgc_through_the_ddp_hook(np):
    result = torchrun(np, ["tests/mp/ddp_checks.py"])
    assert result.stdout.count("ddp checks ok") == np
