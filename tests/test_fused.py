"""The fused exchange (dgc/fused.py): the same bits as one collective per tensor, in two collectives per
step (one allgather of every compressed tensor, one allreduce of every dense one), for every compressor."""
import pathlib

import pytest
import torch

import dgc.horovod as dgc_hvd
from dgc.fused import FusedCommunicator
from dgc.inprocess import InProcessGroup
from training.config import load_configs

ROOT = pathlib.Path(__file__).resolve().parent.parent
CONFIGS = ["dgc.py", "topk_int8.py", "threshold.py", "powersgd.py", "int8.py", "fp16.py", "none.py"]   # deterministic ones


def net():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(32, 64), torch.nn.ReLU(), torch.nn.Linear(64, 48), torch.nn.ReLU(),
                               torch.nn.Linear(48, 4))


def train(config, fused, device, steps=6):
    cfg = load_configs(["configs/digits/digitsnet.py", f"configs/compression/{config}"], root=ROOT / "configs")
    group = InProcessGroup(3)
    models = [net().to(device) for _ in range(3)]

    def worker(comm):
        model = models[comm.rank]
        communicator = FusedCommunicator(comm) if fused else comm
        opt = dgc_hvd.DistributedOptimizer(torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9),
                                           named_parameters=model.named_parameters(), communicator=communicator,
                                           compression=cfg.train.compression(),
                                           memory=cfg.train.memory() if cfg.train.memory else None)
        torch.manual_seed(comm.rank)
        for step in range(steps):
            gen = torch.Generator().manual_seed(100 * comm.rank + step)
            x = torch.randn(16, 32, generator=gen).to(device)
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(x), (x[:, 0] > 0).long()).backward()
            opt.step()
        return opt.last_exchange["collectives"]

    payloads = group.run(worker)[0]
    return models, [entry for entry in group.log if entry[0] == 0], payloads


@pytest.mark.parametrize("config", CONFIGS)
def test_fused_exchange_gives_the_same_bits_in_fewer_collectives(config, device):
    separate, separate_log, payloads = train(config, fused=False, device=device)
    fused, fused_log, _ = train(config, fused=True, device=device)
    for a, b in zip(separate[0].parameters(), fused[0].parameters()):
        assert torch.equal(a, b), config
    assert sum(n for *_, n in separate_log) == sum(n for *_, n in fused_log)
    # 6 tensors: two compressed weights, four dense (a small weight, three biases); 6 steps
    assert len(separate_log) >= 6 * 6 and payloads >= 6
    rounds = {"powersgd.py": 2, "threshold.py": 2}.get(config, 1)
    assert len(fused_log) <= 6 * (rounds + 1), (config, fused_log[:6])
    assert all(name.startswith("fused.") for _, name, _, _ in fused_log)
    if config in ("dgc.py", "topk_int8.py", "int8.py"):       # one allgather (uint8), one allreduce (fp32)
        assert sorted({(c, name) for _, name, c, _ in fused_log}) == [
            ("allgather", "fused.allgather.torch.uint8"), ("allreduce", "fused.allreduce.torch.float32")]
        assert len(fused_log) == 12


def test_train_fuse_exchange_selects_the_fused_communicator():
    import train
    cfg = load_configs(["configs/digits/digitsnet.py", "configs/compression/dgc.py"], ["train.fuse_exchange=True"],
                       root=ROOT / "configs")
    model = cfg.model()
    optimizer, exchange = train.build_optimizer(cfg, model, 1, communicator=InProcessGroup(1).communicator(0))
    assert isinstance(exchange.communicator, FusedCommunicator)
    torch.nn.functional.cross_entropy(model(torch.randn(4, 1, 8, 8)), torch.tensor([0, 1, 2, 3])).backward()
    optimizer.step()
    assert exchange.communicator.collectives == 2 < exchange.last_exchange["collectives"]
