"""Every file of configs/compression/ x {flat, hierarchical} x {fused, per-tensor}, loaded as train.py loads it,
through dgc.horovod.DistributedOptimizer and a real backward pass of DigitsNet (BatchNorm; gradients arrive in
backward order, the classifier's bias first), in one process: every rank finishes its steps and every replica
ends bitwise equal. Hierarchical: 2 hosts x 2 ranks; flat: 4 ranks."""
import pytest
import torch

import train
from conftest import COMPRESSION_CONFIGS, ROOT
from dgc.horovod import DistributedOptimizer
from dgc.inprocess import InProcessGroup
from training.config import load_configs

COMPRESSION = COMPRESSION_CONFIGS
HOSTS, PER_HOST = 2, 2
WORLD = HOSTS * PER_HOST
STEPS = 2
TIMEOUT = 20.0
"""Seconds an in-process rank waits for the others before it names the rank that never came (a hang)."""


@pytest.fixture(scope="module", autouse=True)
def one_thread_per_rank():
    """The ranks are threads: one intra-op thread each keeps 2 cores from thrashing."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def communicators(cfg, hierarchical):
    """Per rank, the DistributedOptimizer's communicator arguments, fused as train.py fuses them."""
    if not hierarchical:
        world = InProcessGroup(WORLD, timeout=TIMEOUT)
        return [{"communicator": train.fused(cfg, world.communicator(r))} for r in range(WORLD)]
    leaders = InProcessGroup(HOSTS, timeout=TIMEOUT)
    hosts = [InProcessGroup(PER_HOST, timeout=TIMEOUT) for _ in range(HOSTS)]
    routes = []
    for rank in range(WORLD):
        host, local_rank = divmod(rank, PER_HOST)
        cross = leaders.communicator(host) if local_rank == 0 else None
        local = hosts[host].communicator(local_rank)
        routes.append({"hierarchical": (train.fused(cfg, cross), train.fused(cfg, local))})
    return routes


@pytest.mark.parametrize("fused", [False, True], ids=["per-tensor", "fused"])
@pytest.mark.parametrize("hierarchical", [False, True], ids=["flat", "hierarchical"])
@pytest.mark.parametrize("config", COMPRESSION, ids=[p.stem for p in COMPRESSION])
def test_every_rank_finishes_with_identical_replicas(config, hierarchical, fused, device):
    cfg = load_configs([ROOT / "configs" / "digits" / "digitsnet.py", config], root=ROOT / "configs")
    cfg.train.fuse_exchange, cfg.train.hierarchical = fused, hierarchical
    torch.manual_seed(0)
    nets = [cfg.model().to(device) for _ in range(WORLD)]
    for net in nets[1:]:
        net.load_state_dict(nets[0].state_dict())
    initial = torch.cat([p.detach().reshape(-1) for p in nets[0].parameters()])
    routes = communicators(cfg, hierarchical)

    def worker(comm):
        net = nets[comm.rank]
        optimizer = DistributedOptimizer(train.scaled_optimizer(cfg, net, WORLD),
                                         named_parameters=net.named_parameters(), **routes[comm.rank],
                                         **train.exchange_options(cfg))
        gen = torch.Generator().manual_seed(comm.rank)
        for _ in range(STEPS):
            x, y = torch.randn(8, 1, 8, 8, generator=gen).to(device), torch.randint(10, (8,), generator=gen).to(device)
            optimizer.zero_grad()
            torch.nn.functional.cross_entropy(net(x), y).backward()
            optimizer.step()
        return optimizer.skipped_steps, torch.cat([p.detach().reshape(-1) for p in net.parameters()])

    results = InProcessGroup(WORLD).run(worker)
    weights = results[0][1]
    assert [skipped for skipped, _ in results] == [0] * WORLD
    assert torch.isfinite(weights).all() and not torch.equal(weights, initial)
    differ = [rank for rank, (_, w) in enumerate(results) if not torch.equal(w, weights)]
    assert not differ, f"ranks {differ} end with other weights than rank 0"
