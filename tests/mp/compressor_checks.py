"""Run under horovodrun -np N: every configs/compression/ file over real Horovod collectives for a few steps.
Replicas stay bit-identical (checksums allgathered) and each step's bytes are the encoding's formula for the
compressed weight plus fp32 for the dense tensors, with and without the fused exchange. The threshold compressor's unequal and all-zero counts
go through without a hang."""
import pathlib
import sys

import horovod.torch as hvd
import torch

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))
from test_compressors import CONFIGS, ROOT, batch, model, sgd, threshold_exchange, wire_bytes  # noqa: E402

import dgc.horovod as dgc_hvd  # noqa: E402
from dgc.fused import FusedCommunicator  # noqa: E402
from dgc.horovod import HorovodCommunicator  # noqa: E402
from training.config import load_configs  # noqa: E402

hvd.init()
torch.manual_seed(hvd.rank())
for config, fused in [(c, f) for c in CONFIGS for f in (False, True)]:
    cfg = load_configs(["configs/digits/digitsnet.py", f"configs/compression/{config}"], root=ROOT / "configs")
    net = model()
    memory = cfg.train.memory() if cfg.train.memory is not None else None
    communicator = FusedCommunicator(HorovodCommunicator()) if fused else None
    opt = dgc_hvd.DistributedOptimizer(sgd(cfg, config, net.parameters()),
                                       named_parameters=net.named_parameters(), compression=cfg.train.compression(),
                                       memory=memory, communicator=communicator)
    for step in range(5):
        opt.zero_grad()
        x, y = batch(hvd.rank(), step)
        torch.nn.functional.cross_entropy(net(x), y).backward()
        opt.step()
    flag = opt.last_exchange["control_bytes"]       # the non-finite flag, in the step's first payload's dtype
    assert flag in (1, 2, 4), (config, flag)
    expected = flag + sum(wire_bytes(r.compressor, tuple(r.param.shape), r.name) if r.compressed
                          else r.param.numel() * 4 for r in opt.exchange.routes.values())
    assert opt.last_exchange["bytes_sent"] == expected, (config, opt.last_exchange["bytes_sent"], expected)
    if fused:       # at most one collective per (collective, dtype) and round; here at most 3 per step
        assert communicator.collectives <= 5 * 3 < 5 * opt.last_exchange["collectives"], config
    checksum = torch.tensor([sum(p.double().sum().item() for p in net.parameters())], dtype=torch.float64)
    everyone = hvd.allgather(checksum, name=f"checksum.{config}.{fused}")
    assert torch.equal(everyone, checksum.repeat(hvd.size())), (config, fused, everyone)
for selected in ([0] + [5] * (hvd.size() - 1), [0] * hvd.size()):     # threshold: unequal counts, then none at all
    grads = [torch.zeros(64, 32) for _ in range(hvd.size())]
    for rank, count in enumerate(selected):
        grads[rank].view(-1)[:count] = rank + 1.0
    average, counts = threshold_exchange(HorovodCommunicator(), grads)
    assert counts == selected, counts
    assert torch.equal(average, sum(grads) / hvd.size()), selected
print(f"rank {hvd.rank()}/{hvd.size()}: {len(CONFIGS)} compressors ok")
