"""The replica check (dgc/replicas.py) with N logical workers in one process: one rank's tensor off by one ulp is
found on every rank, naming that rank and tensor; identical replicas pass. train.py's use of it under a real
horovodrun and torchrun, with one rank made to drift, at the end."""
import os

import pytest
import torch

from dgc.inprocess import InProcessGroup
from dgc.replicas import ReplicaMismatch, check_replicas, checksum, replicated_tensors


def bn_model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(6, 4), torch.nn.BatchNorm1d(4), torch.nn.Linear(4, 2))


def check_all(nets, when="after step 7"):
    """Every rank's outcome: None or its ReplicaMismatch message."""
    def worker(comm):
        try:
            check_replicas(comm, replicated_tensors(nets[comm.rank]), when)
        except ReplicaMismatch as error:
            return str(error)
        return None
    return InProcessGroup(len(nets)).run(worker)


def test_identical_replicas_pass():
    assert check_all([bn_model() for _ in range(3)]) == [None] * 3


@pytest.mark.parametrize("rank", [0, 2])
def test_one_ulp_on_one_rank_stops_every_rank_naming_it(rank):
    nets = [bn_model() for _ in range(3)]
    with torch.no_grad():
        w = nets[rank][2].weight.view(-1)
        w[3] = torch.nextafter(w[3], torch.tensor(float("inf")))
    messages = check_all(nets)
    differing = [1, 2] if rank == 0 else [2]       # named against rank 0
    assert len(set(messages)) == 1
    assert messages[0].startswith(f"replicas differ after step 7: ranks {differing} hold other values than rank 0, "
                                  "first in '2.weight' (1 of 7 tensors differ)")


def test_integer_buffers_are_compared_and_floating_buffers_are_not():
    nets = [bn_model() for _ in range(2)]
    nets[1][1](torch.randn(5, 4))       # rank 1's own batch: its running statistics (allowed) and its count
    assert "first in '1.num_batches_tracked' (1 of 7 tensors differ)" in check_all(nets)[0]
    nets[0][1].num_batches_tracked += 1
    assert check_all(nets) == [None, None]


def test_checksum_sees_every_bit_and_every_position():
    x = torch.randn(1000)
    assert checksum(x) != checksum(x.flip(0))
    assert checksum(torch.tensor([0.0, 1.0])) != checksum(torch.tensor([-0.0, 1.0]))
    for dtype in (torch.float16, torch.bfloat16, torch.float64, torch.int64, torch.bool):
        t = torch.ones(5, dtype=dtype)
        changed = t.clone()
        changed[4] = 0
        assert checksum(t) != checksum(changed), dtype


DRIFTING = '''"""Test-only: DigitsNet whose rank 1 nudges one weight before its 3rd training forward."""
import os

import torch

from models import DigitsNet
from training.config import Config, configs


class DriftingNet(DigitsNet):
    def forward(self, x):
        self.calls = getattr(self, "calls", 0) + self.training
        if self.calls == 3 and os.environ.get("HOROVOD_RANK", os.environ.get("RANK")) == "1":
            with torch.no_grad():
                self.classifier[4].weight.view(-1)[0] += 1e-3
        return super().forward(x)


configs.model = Config(DriftingNet, num_classes=10)
'''


@pytest.mark.parametrize("backend,extra", [("horovod", []), ("torch", ["configs/dgc/wm5.py"])],
                         ids=["horovod-baseline", "torch-dgc"])
def test_a_rank_that_drifts_stops_train_py_on_every_rank(backend, extra, tmp_path):
    """train.py with train.check_replicas_every=2: rank 1's weight nudged at step 3 stops the run at step 4's
    check, on every rank, with the rank and the tensor named and no checkpoint written."""
    from conftest import ROOT, horovodrun, torchrun
    config = ROOT / "configs" / f"_drifting_{os.getpid()}.py"      # config files must live under configs/
    config.write_text(DRIFTING)
    try:
        args = ["train.py", "--configs", "configs/digits/digitsnet.py", *extra, str(config),
                "train.check_replicas_every=2", "--run-dir", tmp_path / "run"]
        result = (torchrun(2, [*args, "--backend", "torch"], check=False) if backend == "torch"
                  else horovodrun(2, args, check=False))
    finally:
        config.unlink()
    assert result.returncode != 0
    assert ("train.py: error: replicas differ after step 4: ranks [1] hold other values than rank 0, first in "
            "'classifier.4.weight' (1 of 12 tensors differ)") in result.stderr + result.stdout, result.stderr[-3000:]
    assert not (tmp_path / "run" / "checkpoints" / "checkpoint.pt").exists()


@pytest.mark.parametrize("value", ["-1", "'epoch'", "True"])
def test_bad_check_replicas_every_fails_before_training(value):
    from conftest import ROOT
    from train import check_config
    from training.config import ConfigError, load_configs
    cfg = load_configs(["configs/digits/digitsnet.py"], [f"train.check_replicas_every={value}"], root=ROOT / "configs")
    with pytest.raises(ConfigError, match=r"'train.check_replicas_every' must be None \(once per epoch\) or an "
                                          f"int >= 0 \\(steps; 0: never\\), got {value}"):
        check_config(cfg)
