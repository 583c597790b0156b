"""Run under horovodrun: allreduce, allgather of different lengths per rank, broadcast give exact results; with
2 ranks, the in-process communicator's averages equal HorovodCommunicator's bit for bit in every supported
dtype, over a wide range of magnitudes (float16 subnormals included, where prescaling rounds)."""
import horovod.torch as hvd
import torch

from dgc.compressors.base import SUPPORTED_DTYPES, Payload
from dgc.horovod import HorovodCommunicator
from dgc.inprocess import InProcessGroup

hvd.init()
rank, size = hvd.rank(), hvd.size()
total = hvd.allreduce(torch.full((5,), float(rank + 1)), op=hvd.Sum, name="sum")
assert torch.equal(total, torch.full((5,), float(size * (size + 1) // 2))), total
mean = hvd.allreduce(torch.full((3,), float(rank)), op=hvd.Average, name="mean")
assert torch.allclose(mean, torch.full((3,), (size - 1) / 2)), mean
gathered = hvd.allgather(torch.full((rank + 1, 2), float(rank)), name="gather")
expected = torch.cat([torch.full((r + 1, 2), float(r)) for r in range(size)])
assert torch.equal(gathered, expected), gathered
value = torch.full((4,), 42.0) if rank == 0 else torch.zeros(4)
assert torch.equal(hvd.broadcast(value, root_rank=0, name="bcast"), torch.full((4,), 42.0))


def values(rank, dtype, numel=50_000):
    gen = torch.Generator().manual_seed(rank)
    magnitude = torch.exp2(torch.randint(-26, 14, (numel,), generator=gen).double())
    return (torch.randn(numel, generator=gen, dtype=torch.float64) * magnitude).to(dtype)


def bits(tensor):
    return tensor.view({8: torch.int64, 4: torch.int32, 2: torch.int16}[tensor.element_size()])


if size == 2:
    comm = HorovodCommunicator()
    for dtype in SUPPORTED_DTYPES:
        horovod = comm.wait(comm.start(Payload(values(rank, dtype), "allreduce", 0), f"avg.{dtype}"))
        inprocess = InProcessGroup(size).run(
            lambda c: c.wait(c.start(Payload(values(c.rank, dtype), "allreduce", 0), "avg")))[rank]
        differ = int((bits(horovod) != bits(inprocess)).sum())
        assert differ == 0, f"{dtype}: {differ} of {horovod.numel()} in-process averages differ from Horovod's"
print(f"rank {rank}/{size}: collectives ok")
