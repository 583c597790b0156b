"""Run under horovodrun -np 4 -H localhost:2,127.0.0.1:2 (two hosts of two ranks): the hierarchical exchange
over real Horovod process sets.

1. Dense (no compressor): the same weights as hvd.DistributedOptimizer after 10 steps.
2. DGC 0.01 with momentum correction, plain and fused: every replica identical, the fused run equal to the
   plain one, residuals only on the hosts' leaders, bytes between hosts only from the leaders.
3. The multi-round compressors (configs/compression/powersgd.py, threshold.py, loaded as train.py loads them)
   fused, on DigitsNet (BatchNorm) with a real backward: every rank finishes, every replica identical.
"""
import horovod.torch as hvd
import torch

import dgc.horovod as dgc_hvd
from dgc.compressors.base import Compressor
from dgc.compression import DGCCompressor
from dgc.fused import FusedCommunicator
from dgc.memory import DGCSGDMemory
from train import ROOT, exchange_options, scaled_optimizer
from training.config import load_configs

CONFIGS = ROOT / "configs"

hvd.init(process_sets="dynamic")
RANK, SIZE = hvd.rank(), hvd.size()
LEADERS, LOCAL = dgc_hvd.hierarchical_communicators()
assert LOCAL is not None and LOCAL.size == 2 and (LEADERS is not None) == (LOCAL.rank == 0), (RANK, LOCAL.rank)
assert LEADERS is None or LEADERS.size == SIZE // 2


def model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(32, 64), torch.nn.ReLU(), torch.nn.Linear(64, 48),
                               torch.nn.ReLU(), torch.nn.Linear(48, 5))


def train(net, opt, steps=10):
    gen = torch.Generator().manual_seed(1000 * RANK)
    torch.manual_seed(RANK)       # DGC's threshold sample: a different draw on every rank
    for _ in range(steps):
        x, y = torch.randn(16, 32, generator=gen), torch.randint(5, (16,), generator=gen)
        opt.zero_grad()
        torch.nn.functional.cross_entropy(net(x), y).backward()
        opt.step()
    return torch.cat([p.detach().reshape(-1) for p in net.parameters()])


def sgd(net):
    return torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-3)


def check_dense():
    ref_net, net = model(), model()
    ref = train(ref_net, hvd.DistributedOptimizer(sgd(ref_net), named_parameters=ref_net.named_parameters()))
    opt = dgc_hvd.DistributedOptimizer(sgd(net), named_parameters=net.named_parameters(), compression=Compressor(),
                                       hierarchical=(LEADERS, LOCAL))
    got = train(net, opt)
    assert torch.allclose(got, ref, atol=1e-5, rtol=0), (got - ref).abs().max().item()


def check_dgc(fused):
    net = model()
    memory = DGCSGDMemory(gradient_clipping=5.0)
    communicators = (LEADERS, LOCAL)
    if fused:
        communicators = (LEADERS and FusedCommunicator(LEADERS), FusedCommunicator(LOCAL))
    opt = dgc_hvd.DistributedOptimizer(sgd(net), named_parameters=net.named_parameters(),
                                       compression=DGCCompressor(0.01, min_compress_numel=1000), memory=memory,
                                       hierarchical=communicators)
    weights = train(net, opt)
    # Named: leaders ran more collectives than the others, so Horovod's per-process "noname.<n>" names differ.
    replicas = hvd.allgather(weights.unsqueeze(0), name=f"replicas.{fused}")
    assert all(torch.equal(replicas[0], r) for r in replicas), "replicas differ"
    stats = opt.last_exchange
    if LEADERS is None:
        assert all(b == {} for b in memory.buffers.values()) and stats["bytes_sent"] == 0, stats
    else:
        assert set(memory.buffers["velocities"]) == {"0.weight", "2.weight"}
        assert 0 < stats["bytes_sent"] < 0.2 * stats["dense_bytes"], stats
    assert stats["local_bytes"] == 2 * stats["dense_bytes"], stats
    return weights


def check_config(name, steps=3):
    cfg = load_configs([CONFIGS / "digits" / "digitsnet.py", CONFIGS / "compression" / name], root=CONFIGS)
    torch.manual_seed(0)
    net = cfg.model()
    opt = dgc_hvd.DistributedOptimizer(scaled_optimizer(cfg, net, SIZE), named_parameters=net.named_parameters(),
                                       hierarchical=(LEADERS and FusedCommunicator(LEADERS), FusedCommunicator(LOCAL)),
                                       **exchange_options(cfg))
    gen = torch.Generator().manual_seed(RANK)
    for _ in range(steps):
        x, y = torch.randn(8, 1, 8, 8, generator=gen), torch.randint(10, (8,), generator=gen)
        opt.zero_grad()
        torch.nn.functional.cross_entropy(net(x), y).backward()
        opt.step()
    weights = torch.cat([p.detach().reshape(-1) for p in net.parameters()])
    replicas = hvd.allgather(weights.unsqueeze(0), name=f"replicas.{name}")
    assert all(torch.equal(replicas[0], r) for r in replicas), f"{name}: replicas differ"
    assert opt.skipped_steps == 0 and opt.last_exchange["local_bytes"] > 0, (name, opt.last_exchange)


check_dense()
plain = check_dgc(fused=False)
assert torch.equal(check_dgc(fused=True), plain), "fused hierarchical run differs from the plain one"
for config in ("powersgd.py", "threshold.py"):
    check_config(config)
hvd.barrier()
if RANK == 0:
    print("hierarchical checks passed", flush=True)
