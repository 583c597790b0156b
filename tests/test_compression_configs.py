"""Every file of configs/compression/ trains digits as it is (issue 19, item 8): DigitsNet, 5 epochs, the
dataset file's lr times the compression file's train.lr_multiplier, > 80% test top-1. train.py's main()
runs each file on one Horovod worker (the compressor's encoding and decoding in the path, as with more);
two processes, one per core, take half of the files each, so the start-up is paid twice, not per file."""
import json
import os
import subprocess
import sys

import pytest

from conftest import ROOT
from training.config import ConfigError, load_configs

CONFIGS = sorted(p.stem for p in (ROOT / "configs" / "compression").glob("*.py") if p.name != "__init__.py")


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    out = tmp_path_factory.mktemp("configs")
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    jobs = [subprocess.Popen([sys.executable, "tests/mp/train_configs.py", str(out), "configs/digits/digitsnet.py",
                              "train.num_epochs=5", "--", *(f"configs/compression/{c}.py" for c in half)],
                             cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            for half in (CONFIGS[0::2], CONFIGS[1::2])]
    for job in jobs:
        output, _ = job.communicate(timeout=600)
        assert job.returncode == 0, output[-6000:]
    return {c: json.loads((out / c / "metrics.json").read_text()) for c in CONFIGS}


@pytest.mark.parametrize("config", CONFIGS)
def test_config_trains_digits_as_it_is(config, results):
    metrics = results[config]
    assert len(metrics["history"]) == 5, metrics
    assert metrics["final_test_top1"] > 80, (config, [round(h["test_top1"], 1) for h in metrics["history"]])


def test_sign_configs_lower_the_lr_by_their_multiplier():
    """signSGD and Signum move every value by lr: their files set train.lr_multiplier, which scaled_optimizer
    applies to the dataset file's lr (0.05 for digits), times the workers."""
    import torch

    import train
    for name in ("signsgd", "signum"):
        cfg = load_configs(["configs/digits/digitsnet.py", f"configs/compression/{name}.py"], root=ROOT / "configs")
        optimizer = train.scaled_optimizer(cfg, torch.nn.Linear(2, 2), world_size=2)
        assert optimizer.param_groups[0]["lr"] == pytest.approx(0.05 * 0.01 * 2)


@pytest.mark.parametrize("value", [0, -0.5, float("inf"), "0.01", True])
def test_bad_lr_multiplier_is_named(value):
    import train
    cfg = load_configs(["configs/digits/digitsnet.py"], root=ROOT / "configs")
    cfg.train.lr_multiplier = value
    with pytest.raises(ConfigError, match=r"train.lr_multiplier.*positive finite number.*got " + repr(value)[:3]):
        train.check_config(cfg)
