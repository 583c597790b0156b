"""Run under horovodrun: allreduce, allgather of different lengths per rank, broadcast give exact results."""
import horovod.torch as hvd
import torch

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
print(f"rank {rank}/{size}: collectives ok")
