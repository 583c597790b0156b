"""A skipped step restores the model's buffers too (dgc.buffers through dgc.horovod.DistributedOptimizer(model=)):
a NaN *input* on one rank of a BatchNorm model leaves every rank's parameters and buffers bitwise as if that
batch had been left out. N logical workers in one process; the DDP hook's twin is in tests/mp/ddp_checks.py."""
import pytest
import torch

import dgc.horovod as dgc_hvd
from dgc.buffers import BufferSnapshot
from dgc.compressors.topk import TopKCompressor
from dgc.inprocess import InProcessGroup
from dgc.memory import DGCSGDMemory

RANKS, STEPS, BAD_STEP, BAD_RANK = 2, 5, 2, 1


def bn_model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(2, 8, 3, padding=1, bias=False), torch.nn.BatchNorm2d(8),
                               torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.Linear(8 * 6 * 6, 64),
                               torch.nn.BatchNorm1d(64), torch.nn.ReLU(), torch.nn.Linear(64, 5))


def batches(rank, poison):
    gen = torch.Generator().manual_seed(1000 + rank)
    data = [(torch.randn(8, 2, 6, 6, generator=gen), torch.randint(5, (8,), generator=gen)) for _ in range(STEPS)]
    if poison and rank == BAD_RANK:
        data[BAD_STEP][0][3, 1, 2, 2] = float("nan")
    return data


def state(net):
    return {k: v.clone() for k, v in net.state_dict().items()}


def run(compression, poison, left_out=(), passes=1):
    """Every rank's state_dict (parameters and buffers) after training, the state just before and just after
    the bad step, and the skip decisions. ``passes``: each batch split into that many backward passes."""
    nets = [bn_model() for _ in range(RANKS)]

    def worker(comm):
        net = nets[comm.rank]
        opt = dgc_hvd.DistributedOptimizer(
            torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-4),
            named_parameters=net.named_parameters(), compression=compression and compression(),
            memory=DGCSGDMemory() if compression is not None else None, communicator=comm,
            backward_passes_per_step=passes, nonfinite="skip", model=net)
        around, skipped = {}, []
        for step, (x, y) in enumerate(batches(comm.rank, poison)):
            if step in left_out:
                continue
            if step == BAD_STEP:
                around["before"] = state(net)
            opt.zero_grad()
            for xs, ys in zip(x.chunk(passes), y.chunk(passes)):
                (torch.nn.functional.cross_entropy(net(xs), ys) / passes).backward()
            opt.step()
            skipped.append(opt.step_skipped)
            if step == BAD_STEP:
                around["after"] = state(net)
            with torch.no_grad():
                net.eval()
                net(x[:2])      # an evaluation between steps: no snapshot, buffers untouched
                net.train()
        return state(net), around, skipped

    return InProcessGroup(RANKS).run(worker)


def assert_equal_states(a, b):
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


COMPRESSIONS = {"topk": lambda: TopKCompressor(0.05, min_compress_numel=100), "dense": None}


@pytest.mark.parametrize("passes", [1, 2])
@pytest.mark.parametrize("compression", COMPRESSIONS.values(), ids=COMPRESSIONS.keys())
def test_nan_input_on_one_rank_of_a_batchnorm_model_is_as_if_left_out(compression, passes):
    poisoned = run(compression, poison=True, passes=passes)
    reference = run(compression, poison=False, left_out=(BAD_STEP,), passes=passes)
    for rank in range(RANKS):
        final, around, skipped = poisoned[rank]
        assert skipped == [step == BAD_STEP for step in range(STEPS)]
        assert_equal_states(around["after"], around["before"])     # parameters and buffers unchanged
        assert_equal_states(final, reference[rank][0])
    assert poisoned[0][1]["before"]["1.num_batches_tracked"].item() == BAD_STEP * passes


def test_without_model_the_buffers_keep_the_skipped_forward():
    """What model= is for: without it, the NaN rank's running statistics are NaN after the skip."""
    net = bn_model()
    x = torch.full((4, 2, 6, 6), float("nan"))
    opt = dgc_hvd.DistributedOptimizer(torch.optim.SGD(net.parameters(), lr=0.1),
                                       named_parameters=net.named_parameters(),
                                       communicator=InProcessGroup(1).communicator(0))
    torch.nn.functional.cross_entropy(net(x), torch.zeros(4, dtype=torch.long)).backward()
    opt.step()
    assert opt.step_skipped and net[1].running_mean.isnan().all()


def test_snapshot_is_taken_once_per_step_and_only_with_gradients():
    net = torch.nn.BatchNorm1d(3)
    snapshot = BufferSnapshot(net)
    with torch.no_grad():
        net(torch.randn(4, 3))                      # a no_grad forward belongs to no step
    start = state(net)
    net(torch.randn(4, 3))
    net(torch.randn(4, 3))                          # a second pass of the same step
    snapshot.end_step(skipped=True)
    assert_equal_states(state(net), start)
    net(torch.randn(4, 3))
    snapshot.end_step(skipped=False)
    assert net.num_batches_tracked.item() == 2


def test_model_must_be_the_trained_module():
    net, other = bn_model(), bn_model()
    with pytest.raises(ValueError, match=r"model= \(Sequential\) does not hold the optimizer's parameters at positions \[0, 1, 2"):
        dgc_hvd.DistributedOptimizer(torch.optim.SGD(net.parameters(), lr=0.1), named_parameters=net.named_parameters(),
                                     communicator=InProcessGroup(1).communicator(0), model=other)
    with pytest.raises(TypeError, match="model=.*must be a torch.nn.Module"):
        dgc_hvd.DistributedOptimizer(torch.optim.SGD(net.parameters(), lr=0.1), named_parameters=net.named_parameters(),
                                     communicator=InProcessGroup(1).communicator(0), model="net")


def test_a_stopped_step_restores_the_buffers_and_the_next_step_takes_a_new_snapshot():
    """nonfinite="stop" rolls the step back and raises on every rank: the buffers go back too, and a caller
    that catches the error and goes on gets a fresh snapshot at the next step (not the stopped step's)."""
    net = bn_model()
    opt = dgc_hvd.DistributedOptimizer(torch.optim.SGD(net.parameters(), lr=0.1),
                                       named_parameters=net.named_parameters(), nonfinite="stop", model=net,
                                       communicator=InProcessGroup(1).communicator(0))
    y = torch.zeros(4, dtype=torch.long)
    start = state(net)
    torch.nn.functional.cross_entropy(net(torch.full((4, 2, 6, 6), float("nan"))), y).backward()
    with pytest.raises(FloatingPointError):
        opt.step()
    assert_equal_states(state(net), start)
    opt.zero_grad()
    torch.nn.functional.cross_entropy(net(torch.randn(4, 2, 6, 6)), y).backward()
    opt.step()
    good = state(net)
    opt.nonfinite = "skip"
    opt.exchange.nonfinite = "skip"
    opt.zero_grad()
    torch.nn.functional.cross_entropy(net(torch.full((4, 2, 6, 6), float("nan"))), y).backward()
    opt.step()
    assert opt.step_skipped
    assert_equal_states(state(net), good)
