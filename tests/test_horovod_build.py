"""The compiled Horovod works: PyTorch + Gloo available, and real 2-process collectives give exact results."""
import subprocess

from conftest import HOROVODRUN, horovodrun


def test_check_build_lists_pytorch_and_gloo():
    out = subprocess.run([str(HOROVODRUN), "--check-build"], capture_output=True, text=True, check=True).stdout
    assert "[X] PyTorch" in out and "[X] Gloo" in out


def test_two_process_collectives():
    result = horovodrun(2, ["tests/mp/collectives.py"], timeout=120)
    assert result.stdout.count("collectives ok") == 2
