"""Smoke test of scripts/bench_input.py: for a config it prints the loader's and training's images/s and
their ratio (no timing is asserted: the figures belong to the script, not to a test on a shared machine)."""
import re
import sys

import pytest
import torch

from conftest import ROOT

sys.path.insert(0, str(ROOT / "scripts"))
import bench_input  # noqa: E402


def bench(capsys, *args):
    assert bench_input.main(["--device", "cpu", *args]) == 0
    out = capsys.readouterr().out
    loader = re.search(r"^loader: ([\d.]+) images/s$", out, re.M)
    training = re.search(r"^training: ([\d.]+) images/s$", out, re.M)
    ratio = re.search(r"^loader / training: ([\d.]+) ", out, re.M)
    assert loader and training and ratio, out
    loader, training, ratio = float(loader[1]), float(training[1]), float(ratio[1])
    assert loader > 0 and training > 0
    # the ratio of the printed figures, within what their rounding (0.05 each, 0.005 the ratio) allows
    assert (loader - 0.05) / (training + 0.05) - 0.005 <= ratio <= (loader + 0.05) / max(training - 0.05, 1e-9) + 0.005
    return out


def test_digits_through_dataloader(capsys):
    assert "DataLoader" in bench(capsys, "--configs", str(ROOT / "configs/digits/digitsnet.py"), "--batches", "3")


@pytest.mark.skipif(not (ROOT / "data/cifar10/train").is_dir() or not (ROOT / "data/cifar10/test").is_dir(),
                    reason="no CIFAR-10 tree in data/cifar10 (bash scripts/get_cifar10.sh data/cifar10)")
def test_cifar_through_device_batches(capsys, monkeypatch):
    monkeypatch.chdir(ROOT)     # the config's data/cifar10 and data/cache
    out = bench(capsys, "--configs", str(ROOT / "configs/cifar/resnet20.py"), "data.train_fraction=0.01",
                "train.batch_size=16", "--batches", "1")
    assert "device-side batches" in out and "500 training images" in out


def test_too_few_batches_is_a_clear_error(capsys):
    with pytest.raises(SystemExit) as stop:
        bench_input.main(["--configs", str(ROOT / "configs/digits/digitsnet.py"), "data.train_fraction=0.01"])
    assert stop.value.code == 2 and "make 0 batches of 32" in capsys.readouterr().err


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_without_a_gpu_is_a_clear_error(capsys):
    with pytest.raises(SystemExit) as stop:
        bench_input.main(["--configs", str(ROOT / "configs/digits/digitsnet.py"), "--device", "cuda"])
    assert stop.value.code == 2 and "no CUDA device" in capsys.readouterr().err
