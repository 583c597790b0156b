"""The DistributedOptimizer contract, single process: N logical workers through dgc.inprocess, every error path,
and the traps of wrapping an optimizer (lr schedulers, load_state_dict, Horovod's state broadcast)."""
import copy
import warnings

import pytest
import torch

import dgc.horovod as dgc_hvd
from dgc.compressors.dgc import DGCCompressor
from dgc.exchange import Exchange
from dgc.fused import FusedCommunicator
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


def test_parameter_names_as_horovods_attribute():
    """Horovod's optimizer keeps ``_parameter_names`` (parameter -> name), which its own test suite reads:
    every parameter named, the names unique, from named_parameters where given, else numbered alike on
    every rank."""
    for named in (None, "model"):
        net = model()
        opt = dgc_hvd.DistributedOptimizer(torch.optim.SGD(net.parameters(), lr=0.1),
                                           named_parameters=net.named_parameters() if named else None,
                                           communicator=InProcessGroup(1).communicator(0))
        names = opt._parameter_names
        assert set(names) == set(net.parameters()) and len(set(names.values())) == len(names)
        if named:
            assert names == {p: n for n, p in net.named_parameters()}


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


def test_fresh_state_step_without_backward_creates_state_and_changes_nothing():
    """What hvd.broadcast_optimizer_state does to a fresh optimizer (zero grads, step()) must create the wrapped
    optimizer's state as training would (momentum buffers of the tensors it steps; the corrected ones' momentum
    is the memory's), so the root's state can be broadcast into it, but neither run an exchange nor move
    parameters (weight decay folded into zero gradients would)."""
    group = InProcessGroup(1)
    net = model()
    opt = wrap(net, group.communicator(0), ratio=0.1, weight_decay=0.1)
    before = copy.deepcopy(net.state_dict())
    for p in net.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()
    assert group.log == [] and opt.exchange.memory.buffers["velocities"] == {}
    assert set(opt.state) == {net[0].bias, net[2].bias}
    assert all("momentum_buffer" in opt.state[p] for p in opt.state)
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


def dense(net, comm, **options):
    """The dense exchange (no compressor) through Horovod's arguments, as a drop-in user writes it."""
    return dgc_hvd.DistributedOptimizer(torch.optim.SGD(net.parameters(), lr=0.1),
                                        named_parameters=net.named_parameters(), communicator=comm, **options)


def averaged_grads(options, world=2, seed_of=lambda rank: 0):
    """Every rank's gradients after synchronize() with ``options``, each rank on its own batch."""
    nets = [model(seed_of(rank)) for rank in range(world)]

    def worker(comm):
        net = nets[comm.rank]
        opt = dense(net, comm, **options)
        backward(net, comm.rank)
        opt.synchronize()
        return {name: p.grad.clone() for name, p in net.named_parameters()}

    return InProcessGroup(world).run(worker)


def local_grads(world=2):
    grads = []
    for rank in range(world):
        net = model()
        backward(net, rank)
        grads.append({name: p.grad.clone() for name, p in net.named_parameters()})
    return grads


def test_horovod_arguments_with_horovods_meaning():
    """op=Sum sums, gradient_predivide_factor and groups leave the average as it is, hvd.Compression.fp16 sends
    every tensor (biases too) in fp16, as hvd.DistributedOptimizer does."""
    import horovod.torch as hvd

    local = local_grads()
    mean = {name: (local[0][name] + local[1][name]) / 2 for name in local[0]}
    net = model()
    groups = [[net[0].weight, net[2].weight]]
    for options, factor in (({}, 1), ({"op": hvd.Sum}, 2), ({"gradient_predivide_factor": 2.0}, 1),
                            ({"compression": hvd.Compression.none, "groups": 2}, 1)):
        for grads in averaged_grads(options):
            for name, grad in grads.items():
                torch.testing.assert_close(grad, factor * mean[name], rtol=0, atol=1e-6, msg=f"{options} {name}")
    group = InProcessGroup(1)
    opt = dgc_hvd.DistributedOptimizer(torch.optim.SGD(net.parameters(), lr=0.1),
                                       named_parameters=net.named_parameters(), communicator=group.communicator(0),
                                       compression=hvd.Compression.fp16, groups=groups)
    backward(net)
    opt.step()
    sizes = {name: nbytes for _, name, _, nbytes in exchanges(group)}
    assert sizes == {name: 2 * p.numel() for name, p in net.named_parameters()}, sizes
    with pytest.warns(DeprecationWarning, match="num_groups"):
        dense(model(), InProcessGroup(1).communicator(0), num_groups=2)


def test_horovod_arguments_refused_by_name_before_training():
    import horovod.torch as hvd

    comm = InProcessGroup(1).communicator(0)
    net = model()
    for options, message in (
            ({"op": hvd.Adasum}, r"op=Adasum is not supported by dgc; .*op=hvd.Average"),
            ({"op": hvd.Max}, r"op=Max is not supported by dgc"),
            ({"op": hvd.Sum, "gradient_predivide_factor": 2.0}, r"gradient_predivide_factor=2.0 needs op=hvd.Average"),
            ({"gradient_predivide_factor": 0}, r"gradient_predivide_factor=0 must be a number > 0"),
            ({"groups": -1}, r"groups=-1; expected an int > 0"),
            ({"groups": [[torch.zeros(1)]]}, r"groups member 0 .*is Tensor, not one of the optimizer's parameters"),
            ({"groups": [[net[0].weight], [net[0].weight]]}, r"groups member 1 .*shape \(64, 32\).* appears in more than one group"),
            ({"compression": hvd.compression.NoneCompressor()}, r"is a Horovod compressor; dgc takes"),
            ({"process_set": [0, 1]}, r"process_set=\[0, 1\]; expected a horovod.torch ProcessSet"),
            ({"nonfinite": None}, r"nonfinite=None; expected 'stop' .* or 'skip'"),
            ({"nonfinite": "raise"}, r"nonfinite='raise'; expected 'stop'"),
            ({"hierarchical": (comm, None)}, r"communicator and hierarchical were both given; give at most one")):
        with pytest.raises(ValueError, match=message):
            dense(net, comm, **options)
    assert not any(p._post_accumulate_grad_hooks for p in net.parameters()), "a refused wrap left hooks"


def test_set_backward_passes_per_step_as_horovod():
    """After set_backward_passes_per_step(2) two passes make one exchange; before it, one pass does."""
    group = InProcessGroup(1)
    net = model()
    opt = dense(net, group.communicator(0))
    opt.set_backward_passes_per_step(2)
    assert opt.backward_passes_per_step == 2
    backward(net, step=0)
    assert exchanges(group) == []
    backward(net, step=1)
    assert len(exchanges(group)) == 4
    opt.step()
    with pytest.raises(ValueError, match=r"backward_passes_per_step=0 must be an int >= 1"):
        opt.set_backward_passes_per_step(0)


def embedding_model(seed=0):
    torch.manual_seed(seed)
    return torch.nn.ModuleDict({"emb": torch.nn.Embedding(50, 8, sparse=True), "out": torch.nn.Linear(8, 3)})


def embedding_backward(net, rank, poison=False):
    tokens = torch.tensor([[1, 2, 4, 5], [4, 3, 2, 9]]) if rank == 0 else torch.tensor([[1, 3, 4, 7], [4, 7, 9, 9]])
    hidden = net["emb"](tokens).mean(1)
    if poison:
        hidden = hidden * float("nan")
    net["out"](hidden).pow(2).sum().backward()


@pytest.mark.parametrize("sparse_as_dense,fused", [(False, False), (True, False), (False, True)])
def test_sparse_gradients_exchanged_like_horovod(sparse_as_dense, fused):
    """nn.Embedding(sparse=True): the average of every rank's sparse gradient (indices and values by allgather,
    or densified), handed to the optimizer sparse, as Horovod does; SparseAdam then steps on it. The ranks'
    sparse gradients differ in size, so they bypass a fused communicator."""
    local = []
    for rank in range(2):
        net = embedding_model()
        embedding_backward(net, rank)
        local.append(net["emb"].weight.grad.to_dense())
    nets = [embedding_model(), embedding_model()]

    def worker(comm):
        net = nets[comm.rank]
        opt = dgc_hvd.DistributedOptimizer(torch.optim.SparseAdam(list(net["emb"].parameters()), lr=0.1),
                                           named_parameters=net["emb"].named_parameters(),
                                           communicator=FusedCommunicator(comm) if fused else comm,
                                           sparse_as_dense=sparse_as_dense)
        embedding_backward(net, comm.rank)
        opt.synchronize()
        grad = net["emb"].weight.grad
        assert grad.is_sparse
        with opt.skip_synchronize():
            opt.step()
        return grad.to_dense()

    group = InProcessGroup(2)
    for grad in group.run(worker):
        torch.testing.assert_close(grad, (local[0] + local[1]) / 2, rtol=0, atol=1e-7)
    gathered = {name for _, name, collective, _ in group.log if collective == "allgather"}
    assert gathered == (set() if sparse_as_dense else {"weight.sparse_indices", "weight.sparse_values"})
    assert torch.equal(nets[0]["emb"].weight, nets[1]["emb"].weight)


def test_sparse_gradient_nonfinite_skipped_and_compressed_sparse_refused():
    nets = [embedding_model(), embedding_model()]

    def worker(comm):
        net = nets[comm.rank]
        opt = dgc_hvd.DistributedOptimizer(torch.optim.SGD(net["emb"].parameters(), lr=0.1),
                                           named_parameters=net["emb"].named_parameters(), communicator=comm)
        before = net["emb"].weight.detach().clone()
        embedding_backward(net, comm.rank, poison=comm.rank == 1)
        opt.step()
        return opt.step_skipped, torch.equal(before, net["emb"].weight)

    assert InProcessGroup(2).run(worker) == [(True, True), (True, True)]
    net = embedding_model()
    opt = dgc_hvd.DistributedOptimizer(torch.optim.SGD(net.parameters(), lr=0.1),
                                       named_parameters=net.named_parameters(),
                                       compression=DGCCompressor(0.1, min_compress_numel=100),
                                       communicator=InProcessGroup(1).communicator(0))
    with pytest.raises(ValueError, match=r"gradient of 'emb.weight' is sparse .* is compressed.*sparse_as_dense=True"):
        embedding_backward(net, 0)
