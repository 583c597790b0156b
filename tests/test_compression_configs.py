"""Every file of configs/compression/ trains digits as it is (issue 19, item 8): DigitsNet, 5 epochs, the
dataset file's lr times the compression file's train.lr_multiplier, > 80% test top-1. train.py's main()
runs each file on one Horovod worker (the compressor's encoding and decoding in the path, as with more);
two processes, one per core, share the files (each takes the next one not yet taken), so the start-up is
paid twice, not per file."""
import json
import os
import re
import subprocess
import sys

import pytest

from conftest import ROOT
from training.config import ConfigError, load_configs

CONFIGS = sorted(p.stem for p in (ROOT / "configs" / "compression").glob("*.py") if p.name != "__init__.py")


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    """{config: metrics.json, or None with the runs' output where it did not finish}."""
    out = tmp_path_factory.mktemp("configs")
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    command = [sys.executable, "tests/mp/train_configs.py", "--share", str(out), "configs/digits/digitsnet.py",
               "train.num_epochs=5", "--", *(f"configs/compression/{c}.py" for c in CONFIGS)]
    jobs = [subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            for _ in range(2)]
    try:
        outputs = [job.communicate(timeout=600)[0] for job in jobs]
    finally:
        for job in jobs:
            job.kill()
    found = {}
    for c in CONFIGS:
        metrics, error = out / c / "metrics.json", out / f"{c}.error"
        found[c] = (json.loads(metrics.read_text()) if metrics.is_file() else None,
                    error.read_text() if error.is_file() else "\n".join(o[-3000:] for o in outputs))
    return found


@pytest.mark.parametrize("config", CONFIGS)
def test_config_trains_digits_as_it_is(config, results):
    metrics, problem = results[config]
    assert metrics is not None, problem
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
    with pytest.raises(ConfigError, match=r"train.lr_multiplier.*positive finite number.*got " + re.escape(repr(value))):
        train.check_config(cfg)
