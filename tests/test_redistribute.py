"""Resuming on another topology keeps the replicas identical: real exchanges in one process train a few
steps, every rank checkpoints (training.checkpoint.save), the run resumes (training.checkpoint.resume) as
2 hosts x 2 ranks hierarchical -> 4 flat, -> 2 flat, or flat -> hierarchical, and trains on. Every compressing
rank must start with the same shared compressor state (random-k's step counters, PowerSGD's warm start), taken
from a rank that compressed (a hierarchical run's non-leaders never compress: their state is empty), so every
rank's averages and parameters stay bitwise equal."""
import copy
import threading

import pytest
import torch

from dgc.compressors.powersgd import PowerSGDCompressor
from dgc.compressors.randomk import RandomKCompressor
from dgc.compressors.signum import SignumCompressor
from dgc.exchange import Exchange
from dgc.inprocess import InProcessGroup
from dgc.memory import ResidualMemory
from training import checkpoint as ckpt

SHAPES = {"conv": (16, 4, 3, 3), "fc": (24, 40), "bias": (24,)}
COMPRESSORS = {
    "randomk": (lambda: RandomKCompressor(0.05, min_compress_numel=100), ResidualMemory),
    "powersgd": (lambda: PowerSGDCompressor(rank=2, min_compress_numel=100), ResidualMemory),
    "signum": (lambda: SignumCompressor(min_compress_numel=100), lambda: None),
}
FLAT4, FLAT2, HIER = ("flat", 4, 1), ("flat", 2, 1), ("hier", 2, 2)   # (kind, hosts, ranks per host)


class Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        gen = torch.Generator().manual_seed(0)
        for name, shape in SHAPES.items():
            self.register_parameter(name, torch.nn.Parameter(torch.randn(shape, generator=gen)))


def run(topology, compressor, phase, steps, folder):
    """Every rank of ``topology`` resumes from ``folder`` (a fresh start if it holds no checkpoint), trains
    ``steps`` steps (its own gradients, SGD on the average), checkpoints; returns per rank: the compressor
    state just after resuming, the averages per step, the parameters, whether it compresses."""
    kind, hosts, per_host = topology
    world = hosts * per_host
    hierarchical = kind == "hier"
    leaders = list(range(0, world, per_host)) if hierarchical else None
    cross = InProcessGroup(hosts)
    locals_ = [InProcessGroup(per_host) for _ in range(hosts)]
    barrier = threading.Barrier(world, timeout=60)
    make_compressor, make_memory = COMPRESSORS[compressor]

    def worker(comm):
        host, local_rank = divmod(comm.rank, per_host)
        model = Net()
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda epoch: 1.0)
        if hierarchical:
            ex = Exchange(list(model.named_parameters()), cross.communicator(host) if local_rank == 0 else None,
                          make_compressor(), make_memory(), local=locals_[host].communicator(local_rank))
        else:
            ex = Exchange(list(model.named_parameters()), comm, make_compressor(), make_memory())
        epoch, _ = ckpt.resume(folder / "checkpoint.pt", folder, comm.rank, world, "cfg", model, optimizer,
                               scheduler, ex, all_ok=lambda ok: ok, leaders=leaders)
        assert epoch == phase
        loaded = copy.deepcopy(ex.compressor.state_dict())
        averages = []
        for step in range(steps):
            gen = torch.Generator().manual_seed(1000 * phase + 100 * comm.rank + step)
            grads = {n: torch.randn(p.shape, generator=gen) + 0.1 * p.detach() for n, p in model.named_parameters()}
            ex.finish([ex.start(n, g) for n, g in grads.items()])
            for n, p in model.named_parameters():
                p.grad = grads[n]
            optimizer.step()
            averages.append(grads)
        ckpt.save(folder / "checkpoint.pt", folder, comm.rank, world, phase + 1, "cfg", model, optimizer, scheduler,
                  ex, [{}] * (phase + 1), barrier=barrier.wait, leaders=leaders)
        compresses = ex.communicator is not None
        return loaded, averages, dict(model.named_parameters()), compresses, ex.compressor.state_dict()
    return InProcessGroup(world).run(worker)


def equal(a, b):
    """Bitwise equality of nested dicts of tensors."""
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(equal(a[k], b[k]) for k in a)
    return torch.equal(a, b) if isinstance(a, torch.Tensor) else a == b


@pytest.mark.filterwarnings("ignore:the checkpoint of epoch:UserWarning")
@pytest.mark.parametrize("compressor", list(COMPRESSORS))
@pytest.mark.parametrize("before,after", [(HIER, FLAT4), (HIER, FLAT2), (FLAT4, HIER), (FLAT2, HIER)],
                         ids=["hier-4flat", "hier-2flat", "4flat-hier", "2flat-hier"])
def test_replicas_stay_identical_after_resuming_on_another_topology(tmp_path, compressor, before, after):
    old = run(before, compressor, 0, 3, tmp_path)
    old_leader_state = old[0][4]
    new = run(after, compressor, 1, 3, tmp_path)
    fresh = COMPRESSORS[compressor][0]().state_dict()
    shared = COMPRESSORS[compressor][0]().shared_state
    reference = new[0]       # random-k from mismatched counters: other positions, other averages on some ranks
    for rank, (_, averages, params, compresses, final) in enumerate(new):
        for step, grads in enumerate(averages):
            for n, g in grads.items():
                assert torch.equal(g, reference[1][step][n]), (rank, step, n)
        for n, p in params.items():
            assert torch.equal(p, reference[2][n]), (rank, n)
        if compresses:
            for key in shared:
                assert equal(final[key], reference[4][key]), (rank, key)
    # PowerSGD from mismatched warm starts stays replicated (all decode the averaged P and Q) but approximates
    # another matrix than the average of the ranks' gradients: the resumed state itself is checked.
    for rank, (loaded, averages, params, compresses, _) in enumerate(new):
        if not compresses:       # a hierarchical non-leader: it never compresses and is given nothing
            assert equal(loaded, fresh), rank
            continue
        for key in shared:       # the old leader's, on every compressing rank
            assert equal(loaded[key], old_leader_state[key]), (rank, key)
        for key in set(loaded) - set(shared):   # per rank (Signum's momentum): some old compressing rank's
            assert any(equal(loaded[key], o[4][key]) for o in old if o[3]), (rank, key)
            assert loaded[key], (rank, key)
