"""The hierarchical exchange with 2 hosts x 2 ranks in one process: dense average within a host, the compressed
exchange only between the hosts' leaders, the leader's average broadcast to its host."""
import pytest
import torch

from dgc.compressors.base import Compressor
from dgc.compressors.natural import NaturalCompressor
from dgc.compressors.powersgd import PowerSGDCompressor
from dgc.compressors.topk import TopKCompressor
from dgc.exchange import Exchange
from dgc.fused import FusedCommunicator
from dgc.inprocess import InProcessGroup
from dgc.memory import ResidualMemory

HOSTS, PER_HOST = 2, 2
SHAPES = {"conv": (32, 8, 3, 3), "fc": (40, 64), "bias": (40,)}
BACKWARD = list(reversed(SHAPES))
"""The order a real backward pass hands the gradients over (the last layer's bias first): a dense single-round
tensor reaches its broadcast while a multi-round compressor's are still between the hosts."""


def named():
    return [(n, torch.nn.Parameter(torch.zeros(s))) for n, s in SHAPES.items()]


def gradients(rank, step):
    gen = torch.Generator().manual_seed(100 * rank + step)
    return {n: torch.randn(s, generator=gen) for n, s in SHAPES.items()}


def run_hierarchical(make_compressor, steps, fused=False):
    """Every rank's averages per step, its exchange's statistics and memory, over 2 hosts x 2 ranks."""
    world, leaders = InProcessGroup(HOSTS * PER_HOST), InProcessGroup(HOSTS, timeout=20.0)
    hosts = [InProcessGroup(PER_HOST, timeout=20.0) for _ in range(HOSTS)]

    def worker(comm):
        host, local_rank = divmod(comm.rank, PER_HOST)
        local = hosts[host].communicator(local_rank)
        cross = leaders.communicator(host) if local_rank == 0 else None
        if fused:
            local, cross = FusedCommunicator(local), cross and FusedCommunicator(cross)
        ex = Exchange(named(), cross, make_compressor(), ResidualMemory(), local=local)
        averages, stats = [], []
        for step in range(steps):
            grads = gradients(comm.rank, step)
            ex.finish([ex.start(n, grads[n]) for n in BACKWARD])
            averages.append(grads)
            stats.append(ex.collect())
        return averages, stats, ex.memory
    return world.run(worker)


def run_flat_over_host_averages(make_compressor, steps):
    """A flat exchange between HOSTS workers whose gradients are the host averages (in the in-process
    allreduce's own arithmetic): what the hierarchical exchange must equal."""
    def worker(comm):
        ex = Exchange(named(), comm, make_compressor(), ResidualMemory())
        averages = []
        for step in range(steps):
            local = [gradients(comm.rank * PER_HOST + r, step) for r in range(PER_HOST)]
            grads = {n: sum((g[n] for g in local[1:]), local[0][n].clone()).div_(PER_HOST) for n in SHAPES}
            ex.finish([ex.start(n, grads[n]) for n in BACKWARD])
            averages.append(grads)
        return averages, ex.memory
    return InProcessGroup(HOSTS).run(worker)


@pytest.mark.parametrize("fused", [False, True])
@pytest.mark.parametrize("make_compressor", [lambda: TopKCompressor(0.05, min_compress_numel=100),
                                             lambda: PowerSGDCompressor(rank=2, min_compress_numel=100)],
                         ids=["topk", "powersgd"])
def test_hierarchical_equals_the_flat_exchange_over_host_averages(make_compressor, fused):
    steps = 3
    hier = run_hierarchical(make_compressor, steps, fused)
    flat = run_flat_over_host_averages(make_compressor, steps)
    for rank, (averages, stats, memory) in enumerate(hier):
        for step in range(steps):
            for n in SHAPES:
                assert torch.equal(averages[step][n], flat[0][0][step][n]), (rank, step, n)
        if rank % PER_HOST:       # not a leader: no residual, nothing between hosts, only its host's links
            assert memory.buffers.get("residuals", {}) == {}
            assert stats[-1]["bytes_sent"] == 0 and stats[-1]["local_bytes"] == 2 * 4 * sum(
                torch.Size(s).numel() for s in SHAPES.values())
        else:
            leader_memory = flat[rank // PER_HOST][1]
            for n in ("conv", "fc"):
                assert torch.equal(memory.buffers["residuals"][n], leader_memory.buffers["residuals"][n])
            assert 0 < stats[-1]["bytes_sent"] < 4 * sum(torch.Size(s).numel() for s in SHAPES.values())


def test_random_compressor_keeps_every_replica_identical():
    """Natural compression draws its own random numbers on every rank; the host's ranks still end equal,
    because only the leader compresses and the others take its broadcast."""
    torch.manual_seed(0)
    results = run_hierarchical(lambda: NaturalCompressor(min_compress_numel=100), 2)
    for averages, _, _ in results[1:]:
        for step in range(2):
            for n in SHAPES:
                assert torch.equal(averages[step][n], results[0][0][step][n])


def test_dense_hierarchical_average_is_the_average_over_all_ranks():
    (averages, stats, _), *_ = run_hierarchical(Compressor, 1)
    everyone = [gradients(r, 0) for r in range(HOSTS * PER_HOST)]
    for n in SHAPES:
        expected = torch.stack([g[n] for g in everyone]).mean(0)
        assert torch.allclose(averages[0][n], expected, atol=1e-6, rtol=0)
    assert stats[0]["bytes_sent"] == 4 * sum(torch.Size(s).numel() for s in SHAPES.values())


def test_leader_without_a_leaders_communicator_is_refused():
    with pytest.raises(ValueError, match="rank 0 of its host has no leaders' communicator"):
        Exchange(named(), None, TopKCompressor(0.05), ResidualMemory(), local=InProcessGroup(2).communicator(0))
    with pytest.raises(ValueError, match="rank 1 of its host has a leaders' communicator"):
        Exchange(named(), InProcessGroup(2).communicator(1), TopKCompressor(0.05), ResidualMemory(),
                 local=InProcessGroup(2).communicator(1))
