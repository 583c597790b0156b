"""The DistributedOptimizer contract, single process: N logical workers through dgc.inprocess, every error path,
and the traps of wrapping an optimizer (lr schedulers, load_state_dict, Horovod's state broadcast)."""
import copy
import warnings

import pytest
import torch

import dgc.horovod as dgc_hvd
from dgc.compressors.dgc import DGCCompressor
from dgc.exchange import Exchange
from dgc.inprocess import InProcessGroup
from dgc.memory import DGCSGDMemory
from dgc.optim import DGCSGD



def exchanges(group):
    """The gradient payloads a group carried (not the per-step non-finite flag)."""
    return [entry for entry in group.log if entry[1] != "dgc.nonfinite"]

def model(seed=0):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(32, 64), torch.nn.ReLU(), torch.nn.Linear(64, 5))


def batch(rank, step):
    gen = torch.Generator().manual_seed(100 * rank + step)
    return torch.randn(8, 32, generator=gen), torch.randint(5, (8,), generator=gen)


def backward(net, rank=0, step=0):
    x, y = batch(rank, step)
    torch.nn.functional.cross_entropy(net(x), y).backward()


def wrap(net, comm=None, ratio=1.0, memory=None, optimizer=torch.optim.SGD, **sgd):
    sgd = {"lr": 0.1, "momentum": 0.9, **sgd}
    comm = comm or InProcessGroup(1).communicator(0)
    return dgc_hvd.DistributedOptimizer(optimizer(net.parameters(), **sgd), named_parameters=net.named_parameters(),
                                        compression=DGCCompressor(compress_ratio=ratio, min_compress_numel=100),
                                        memory=memory if memory is not None else DGCSGDMemory(momentum_masking=False),
                                        communicator=comm)


@pytest.mark.parametrize("nesterov,optimizer", [(False, torch.optim.SGD), (True, torch.optim.SGD), (True, DGCSGD)])
def test_ratio_one_equals_torch_sgd_on_the_averaged_gradient(nesterov, optimizer):
    """Two workers, DGC at ratio 1.0 (masking off) == torch SGD (momentum, weight decay, Nesterov) on the mean
    gradient: momentum correction moved momentum and weight decay before the exchange, nothing else."""
    sgd = dict(lr=0.05, momentum=0.9, weight_decay=1e-3, nesterov=nesterov)
    ref = model()
    ref_opt = torch.optim.SGD(ref.parameters(), **sgd)
    for step in range(8):
        grads = []
        for rank in range(2):
            ref_opt.zero_grad()
            backward(ref, rank, step)
            grads.append([p.grad.clone() for p in ref.parameters()])
        for p, *per_rank in zip(ref.parameters(), *grads):
            p.grad = sum(per_rank) / 2
        ref_opt.step()
    nets = [model(), model()]

    def worker(comm):
        net = nets[comm.rank]
        opt = wrap(net, comm, optimizer=optimizer, **sgd)
        assert (opt.exchange.memory.momentum, opt.exchange.memory.nesterov) == (0.9, nesterov)
        for step in range(8):
            opt.zero_grad()
            backward(net, comm.rank, step)
            opt.step()
        return opt.last_exchange

    stats = InProcessGroup(2).run(worker)
    for a, b, c in zip(ref.parameters(), *(n.parameters() for n in nets)):
        torch.testing.assert_close(b, a, rtol=0, atol=1e-6)
        assert torch.equal(b, c)
    assert stats[0]["density"] == 1.0 and stats[0]["compression_ratio"] > 1  # (value, index) pairs cost more


def test_naming_and_argument_errors():
    net = model()
    params = list(net.parameters())
    with pytest.raises(ValueError, match=r"duplicate names \['a'\]"):
        dgc_hvd.DistributedOptimizer(torch.optim.SGD(params, lr=0.1), named_parameters=[("a", params[0]), ("a", params[1])],
                                     communicator=InProcessGroup(1).communicator(0))
    with pytest.raises(ValueError, match=r"positions \[1, 2, 3\] are not in named_parameters"):
        dgc_hvd.DistributedOptimizer(torch.optim.SGD(params, lr=0.1), named_parameters=[("a", params[0])],
                                     communicator=InProcessGroup(1).communicator(0))
    for bad in (0, 1.5, True):
        with pytest.raises(ValueError, match="backward_passes_per_step"):
            dgc_hvd.DistributedOptimizer(torch.optim.SGD(params, lr=0.1), named_parameters=net.named_parameters(),
                                         backward_passes_per_step=bad, communicator=InProcessGroup(1).communicator(0))
    for bad in ((None, None), (InProcessGroup(1).communicator(0),), "yes"):
        with pytest.raises(ValueError, match=r"hierarchical=.*expected True or a tuple"):
            dgc_hvd.DistributedOptimizer(torch.optim.SGD(params, lr=0.1), named_parameters=net.named_parameters(),
                                         hierarchical=bad)
    flat = dgc_hvd.DistributedOptimizer(torch.optim.SGD(params, lr=0.1), named_parameters=net.named_parameters(),
                                        hierarchical=(InProcessGroup(1).communicator(0), None))   # one rank per host
    assert flat.exchange.local is None
    with pytest.raises(ValueError, match=r"communicator=None; expected a communicator"):
        Exchange(list(net.named_parameters()), None)
    opt = wrap(model())
    with pytest.raises(ValueError, match="already distributed"):
        dgc_hvd.DistributedOptimizer(opt, communicator=InProcessGroup(1).communicator(0))


def test_momentum_correction_needs_a_consistent_sgd():
    with pytest.raises(ValueError, match=r"momentum=0.5 but the optimizer has momentum=0.9"):
        wrap(model(), memory=DGCSGDMemory(momentum=0.5))
    with pytest.raises(ValueError, match="dampening"):
        wrap(model(), dampening=0.1)
    net = model()
    with pytest.raises(TypeError, match="must be torch.optim.SGD, not Adam"):
        dgc_hvd.DistributedOptimizer(torch.optim.Adam(net.parameters()), named_parameters=net.named_parameters(),
                                     compression=DGCCompressor(min_compress_numel=100), memory=DGCSGDMemory(),
                                     communicator=InProcessGroup(1).communicator(0))
    net = model()
    groups = [{"params": [net[0].weight], "momentum": 0.9}, {"params": [net[2].weight], "momentum": 0.5},
              {"params": [net[0].bias, net[2].bias]}]
    with pytest.raises(ValueError, match="different"):
        dgc_hvd.DistributedOptimizer(torch.optim.SGD(groups, lr=0.1), named_parameters=net.named_parameters(),
                                     compression=DGCCompressor(min_compress_numel=100), memory=DGCSGDMemory(),
                                     communicator=InProcessGroup(1).communicator(0))


def test_gradient_computed_too_often_and_zero_grad_in_flight():
    net = model()
    opt = wrap(net)
    backward(net)
    with pytest.raises(AssertionError, match="zero_grad"):
        opt.zero_grad()
    with pytest.raises(AssertionError, match=r"gradient of '2.bias' computed more than backward_passes_per_step=1"):
        backward(net, step=1)


def test_step_after_synchronize_exchanges_once_and_skip_synchronize_is_silent():
    group = InProcessGroup(1)
    net = model()
    opt = wrap(net, group.communicator(0))
    backward(net)
    opt.synchronize()
    torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with opt.skip_synchronize():
            opt.step()
    assert len(exchanges(group)) == 4
    opt.zero_grad()
    backward(net, step=1)
    opt.synchronize()
    with pytest.warns(UserWarning, match="exchanged once, not twice"):
        opt.step()
    assert len(exchanges(group)) == 8


def test_parameter_without_gradient_sends_zeros():
    """A parameter one worker did not use still takes part (zeros), so the collectives stay matched."""
    nets = [model(), model()]

    def worker(comm):
        net = nets[comm.rank]
        opt = wrap(net, comm, momentum=0.0)
        x, y = batch(comm.rank, 0)
        hidden = net[0](x)
        out = net[2](torch.relu(hidden)) if comm.rank == 0 else hidden[:, :5]
        torch.nn.functional.cross_entropy(out, y).backward()
        opt.synchronize()
        return net[2].weight.grad.clone()

    g0, g1 = InProcessGroup(2).run(worker)
    assert torch.equal(g0, g1) and g0.abs().sum() > 0


def test_backward_passes_accumulate_and_zero_grad_drops_an_unfinished_step():
    """backward_passes_per_step=2 == one pass on the summed loss; a zero_grad after one pass drops it."""
    ref, net = model(), model()
    ref_opt = wrap(ref)
    net_opt = dgc_hvd.DistributedOptimizer(torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9),
                                           named_parameters=net.named_parameters(),
                                           compression=DGCCompressor(compress_ratio=1.0, min_compress_numel=100),
                                           memory=DGCSGDMemory(momentum_masking=False), backward_passes_per_step=2,
                                           communicator=InProcessGroup(1).communicator(0))
    backward(net, step=99)
    net_opt.zero_grad()
    for step in range(0, 6, 2):
        ref_opt.zero_grad()
        (x1, y1), (x2, y2) = batch(0, step), batch(0, step + 1)
        (torch.nn.functional.cross_entropy(ref(x1), y1) + torch.nn.functional.cross_entropy(ref(x2), y2)).backward()
        ref_opt.step()
        net_opt.zero_grad()
        backward(net, step=step)
        backward(net, step=step + 1)
        net_opt.step()
    for a, b in zip(ref.parameters(), net.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)


def test_lr_scheduler_created_before_wrapping_still_drives_the_exchange():
    group = InProcessGroup(1)
    net = model()
    sgd = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    scheduler = torch.optim.lr_scheduler.StepLR(sgd, step_size=1, gamma=0.5)
    opt = dgc_hvd.DistributedOptimizer(sgd, named_parameters=net.named_parameters(),
                                       compression=DGCCompressor(compress_ratio=0.1, min_compress_numel=100),
                                       memory=DGCSGDMemory(), communicator=group.communicator(0))
    assert opt is sgd
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for step in range(3):
            opt.zero_grad()
            backward(net, step=step)
            opt.step()
            scheduler.step()
    assert len(exchanges(group)) == 3 * 4, "every step exchanged every gradient"
    assert opt.last_exchange["density"] < 0.2
    assert opt.param_groups[0]["lr"] == pytest.approx(0.1 * 0.5 ** 3)


def test_fresh_state_step_without_backward_changes_nothing():
    """What hvd.broadcast_optimizer_state does to a fresh optimizer (zero grads, step()) must neither run an
    exchange nor move parameters (weight decay folded into zero gradients would)."""
    group = InProcessGroup(1)
    net = model()
    opt = wrap(net, group.communicator(0), ratio=0.1, weight_decay=0.1)
    before = copy.deepcopy(net.state_dict())
    for p in net.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()
    assert group.log == [] and opt.exchange.memory.buffers["velocities"] == {}
    for name, value in net.state_dict().items():
        assert torch.equal(value, before[name]), name
    backward(net)
    opt.step()
    assert len(exchanges(group)) == 4 and not torch.equal(net[0].weight, before["0.weight"])


def test_load_state_dict_weight_decay_is_live_hooks_fire_once_counters_reset():
    net = model()
    opt = dgc_hvd.DistributedOptimizer(torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.0, weight_decay=0.5),
                                       named_parameters=net.named_parameters(),
                                       compression=DGCCompressor(compress_ratio=1.0, min_compress_numel=100),
                                       memory=DGCSGDMemory(momentum_masking=False), backward_passes_per_step=2,
                                       communicator=InProcessGroup(1).communicator(0))
    calls = []
    opt.register_step_post_hook(lambda *args: calls.append("post"))
    backward(net)                      # one of two passes towards a step ...
    state = opt.state_dict()
    state["param_groups"][0]["weight_decay"] = 0.0
    opt.load_state_dict(state)         # ... dropped by the load: counters reset (no zero_grad here)
    for p in net.parameters():
        p.grad = None
    backward(net, step=1)
    backward(net, step=2)              # raised "computed more than backward_passes_per_step" before
    grads = {name: p.grad.clone() for name, p in net.named_parameters()}
    before = {name: p.detach().clone() for name, p in net.named_parameters()}
    opt.step()
    assert calls == ["post"], "step hooks run once per step after load_state_dict"
    for name, p in net.named_parameters():
        torch.testing.assert_close(p.detach(), before[name] - 0.1 * grads[name], rtol=0, atol=1e-7), name


def test_load_state_dict_finishes_exchanges_in_flight_and_discards_them():
    group = InProcessGroup(1)
    net = model()
    opt = wrap(net, group.communicator(0))
    backward(net)
    assert len(exchanges(group)) == 4 and opt._pending
    opt.load_state_dict(opt.state_dict())
    assert not opt._pending
    opt.zero_grad()
    backward(net, step=1)
    opt.step()
    assert len(exchanges(group)) == 8
    assert group.log[4][1] == "dgc.nonfinite"       # the discarded step's flag
    assert opt.last_exchange["bytes_sent"] == sum(nbytes for *_, nbytes in group.log[5:]), "discarded bytes counted"


def test_second_synchronize_warns_and_exchanges_nothing():
    group = InProcessGroup(1)
    net = model()
    opt = wrap(net, group.communicator(0), ratio=0.1)
    backward(net)
    opt.synchronize()
    averaged = [p.grad.clone() for p in net.parameters()]
    with pytest.warns(UserWarning, match="synchronize\\(\\) called twice"):
        opt.synchronize()
    assert len(exchanges(group)) == 4
    assert all(torch.equal(a, p.grad) for a, p in zip(averaged, net.parameters()))
