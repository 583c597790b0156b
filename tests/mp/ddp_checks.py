"""Run under torchrun --nproc-per-node N: the compressors through the DDP communication hook (Gloo).

1. Equivalence: ratio 1.0, masking off => the same weights as plain DDP + torch SGD (momentum 0.9, weight
   decay, Nesterov on and off) after 20 steps.
2. Exchange: at ratio 0.01 every rank's sent values + residual equal what it accumulated (conservation), and
   the replicas stay identical.
3. A NaN batch on the last rank: the step is skipped on every rank (weights equal a run without that batch).
4. state_dict / load_state_dict carries the residuals.
5. (2 ranks) Gradient accumulation (two or three backward passes per step, with and without ``no_sync()``)
   and a branch that no rank uses on some steps (``find_unused_parameters=True``; also one used only in a
   step's second pass): at ratio 1.0 with masking off the same weights as plain DDP + torch SGD;
   optimizer.step() in place of state.step(optimizer) is refused before it changes anything.
6. A NaN input on the last rank of a BatchNorm model: skipped with every rank's parameters and buffers
   unchanged, and bitwise equal to a run without that batch (the hook's BufferSnapshot).
7. (2 ranks) TorchCommunicator's one-tensor allgather, and its tensor-list fallback. The overlapping hook (the default) gives the synchronous hook's (overlap=False) bits on a
   BatchNorm model in several DDP buckets, for DGC, PowerSGD (two rounds, a measured step), fp16 (dense),
   fused DGC and fused PowerSGD; and it overlaps: with rank 1 late, rank 0's last bucket starts while its first is in flight.
"""
import contextlib
import copy
import time

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP

from dgc.compressors.dgc import DGCCompressor
from dgc.compressors.fp16 import FP16Compressor
from dgc.compressors.powersgd import PowerSGDCompressor
from dgc.compressors.topk import TopKCompressor
from dgc.fused import FusedCommunicator
from dgc.memory import DGCSGDMemory, ResidualMemory
from dgc.torch import DGCHook, TorchCommunicator, close_process_group, dgc_hook

dist.init_process_group("gloo")
RANK, SIZE = dist.get_rank(), dist.get_world_size()


def model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(32, 64), torch.nn.ReLU(), torch.nn.Linear(64, 48),
                               torch.nn.ReLU(), torch.nn.Linear(48, 5))


def batches(steps):
    gen = torch.Generator().manual_seed(1000 * RANK)
    return [(torch.randn(16, 32, generator=gen), torch.randint(5, (16,), generator=gen)) for _ in range(steps)]


def train(net, opt, data, hook=None):
    for x, y in data:
        opt.zero_grad()
        torch.nn.functional.cross_entropy(net(x), y).backward()
        if hook is None:
            opt.step()
        else:
            hook.step(opt)


def sgd(net, nesterov=False):
    return torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-3, nesterov=nesterov)


def hooked(compression, memory, nonfinite="skip"):
    net = DDP(model())
    opt = sgd(net.module, nesterov=getattr(memory, "requested", (None, False))[1] or False)
    state = DGCHook(net, opt, compression=compression, memory=memory, nonfinite=nonfinite)
    net.register_comm_hook(state, dgc_hook)
    return net, opt, state


def check_equivalence(nesterov):
    ref = DDP(model())
    train(ref, sgd(ref.module, nesterov), batches(20))
    net = DDP(model())
    opt = sgd(net.module, nesterov)
    state = DGCHook(net, opt, compression=DGCCompressor(1.0, min_compress_numel=1000),
                    memory=DGCSGDMemory(momentum_masking=False))
    net.register_comm_hook(state, dgc_hook)
    assert {n for n, r in state.exchange.routes.items() if r.compressed} == {"0.weight", "2.weight"}
    train(net, opt, batches(20), state)
    for (name, a), b in zip(ref.module.named_parameters(), net.module.parameters()):
        assert torch.allclose(a, b, atol=1e-5, rtol=0), (name, (a - b).abs().max().item())
    assert state.last_exchange["density"] == 1.0


def check_conservation_and_replicas():
    memory = ResidualMemory()
    net, opt, state = hooked(TopKCompressor(0.01, min_compress_numel=1000), memory)
    train(net, opt, batches(5), state)
    accumulated = {n: torch.zeros_like(b) for n, b in memory.buffers["residuals"].items()}
    before = {n: b.clone() for n, b in memory.buffers["residuals"].items()}
    sent = {}
    original_update = memory.update

    def update(name, payload_sent):
        sent[name] = payload_sent
        original_update(name, payload_sent)
    memory.update = update
    x, y = batches(6)[5]
    opt.zero_grad()
    grads = {}
    for name, p in net.module.named_parameters():
        if name in accumulated:
            p.register_hook(lambda g, name=name: grads.__setitem__(name, g.detach().clone()))
    torch.nn.functional.cross_entropy(net(x), y).backward()
    state.step(opt)                                             # commits the step's residuals
    for name in accumulated:
        dense = torch.zeros_like(before[name])
        dense[sent[name].indices] = sent[name].values
        torch.testing.assert_close(dense + memory.buffers["residuals"][name], before[name] + grads[name].reshape(-1))
    replicas = [torch.empty(sum(p.numel() for p in net.parameters())) for _ in range(SIZE)]
    dist.all_gather(replicas, torch.cat([p.detach().reshape(-1) for p in net.parameters()]))
    assert all(torch.equal(replicas[0], r) for r in replicas), "replicas differ"
    saved = copy.deepcopy(state.state_dict())
    other = hooked(TopKCompressor(0.01, min_compress_numel=1000), ResidualMemory())[2]
    other.load_state_dict(saved)
    for name, b in saved["memory"]["residuals"].items():
        assert torch.equal(other.exchange.memory.buffers["residuals"][name], b)


def check_nonfinite_skip():
    data = batches(6)
    poisoned = [(x.clone(), y) for x, y in data]
    if RANK == SIZE - 1:
        poisoned[2][0][0, 0] = float("nan")
    net, opt, state = hooked(TopKCompressor(0.01, min_compress_numel=1000), DGCSGDMemory())
    train(net, opt, poisoned, state)
    ref, ref_opt, ref_state = hooked(TopKCompressor(0.01, min_compress_numel=1000), DGCSGDMemory())
    train(ref, ref_opt, data[:2] + data[3:], ref_state)
    assert state.exchange.skipped_steps == 1
    for a, b in zip(net.parameters(), ref.parameters()):
        assert torch.equal(a, b)


class Branchy(torch.nn.Module):
    """A trunk, a head and a compressed branch that a step may leave out (the same on every rank)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.trunk, self.branch, self.head = torch.nn.Linear(32, 64), torch.nn.Linear(64, 64), torch.nn.Linear(64, 5)

    def forward(self, x, use_branch=True):
        h = torch.relu(self.trunk(x))
        return self.head(h + torch.relu(self.branch(h)) if use_branch else h)


def check_accumulation_and_unused(passes, no_sync, branch_on, set_to_none=True):
    """``passes`` backward passes per step (all but the last under ``no_sync()`` if ``no_sync``); the branch
    is used in pass ``i`` of step ``s`` where ``branch_on(s, i)``: DDP + hook equals DDP + torch SGD (with
    ``set_to_none=False`` an unused branch keeps a zero ``.grad``, which torch SGD steps with momentum)."""
    data = batches(10 * passes)

    def run(hooked_run):
        net = DDP(Branchy(), find_unused_parameters=True)
        opt = sgd(net.module)
        state = None
        if hooked_run:
            state = DGCHook(net, opt, compression=DGCCompressor(1.0, min_compress_numel=1000),
                            memory=DGCSGDMemory(momentum_masking=False))
            net.register_comm_hook(state, dgc_hook)
            assert {n for n, r in state.exchange.routes.items() if r.compressed} == {"trunk.weight", "branch.weight"}
        for step in range(10):
            opt.zero_grad(set_to_none=set_to_none)
            for i in range(passes):
                x, y = data[step * passes + i]
                with net.no_sync() if no_sync and i < passes - 1 else contextlib.nullcontext():
                    (torch.nn.functional.cross_entropy(net(x, branch_on(step, i)), y) / passes).backward()
            if state is None:
                opt.step()
            else:
                state.step(opt)
        return net
    ref, net = run(False), run(True)

    for (name, a), b in zip(ref.module.named_parameters(), net.module.parameters()):
        assert torch.allclose(a, b, atol=1e-5, rtol=0), (passes, no_sync, name, (a - b).abs().max().item())


def check_a_direct_optimizer_step_is_refused():
    """optimizer.step() instead of state.step(optimizer) would leave the step's exchange open (uncommitted)."""
    net, opt, state = hooked(DGCCompressor(0.5, min_compress_numel=1000), DGCSGDMemory())
    x, y = batches(1)[0]
    torch.nn.functional.cross_entropy(net(x), y).backward()
    before = [p.detach().clone() for p in net.parameters()]
    try:
        opt.step()
    except RuntimeError as error:
        assert "call state.step(optimizer)" in str(error), error
    else:
        raise AssertionError("optimizer.step() after a backward through the hook was accepted")
    assert all(torch.equal(a, b) for a, b in zip(before, net.parameters()))
    state.step(opt)
    assert not all(torch.equal(a, b) for a, b in zip(before, net.parameters()))


def check_nonfinite_input_restores_buffers():
    def bn_model():
        torch.manual_seed(0)
        return torch.nn.Sequential(torch.nn.Linear(32, 64), torch.nn.BatchNorm1d(64), torch.nn.ReLU(),
                                   torch.nn.Linear(64, 5))

    def run(data, bad_step=None):
        net = DDP(bn_model())
        opt = sgd(net.module)
        state = DGCHook(net, opt, compression=TopKCompressor(0.01, min_compress_numel=1000), memory=DGCSGDMemory())
        net.register_comm_hook(state, dgc_hook)
        for step, (x, y) in enumerate(data):
            before = copy.deepcopy(net.module.state_dict())
            for name, _ in net.module.named_buffers():     # as DDP's forward broadcasts them from rank 0
                dist.broadcast(before[name], 0)
            train(net, opt, [(x, y)], state)
            if step == bad_step:
                assert state.step_skipped
                for key, value in net.module.state_dict().items():
                    assert torch.equal(value, before[key]), key
        return net.module.state_dict()

    data = batches(5)
    poisoned = [(x.clone(), y) for x, y in data]
    if RANK == SIZE - 1:
        poisoned[2][0][0, 0] = float("nan")
    skipped, left_out = run(poisoned, bad_step=2), run(data[:2] + data[3:])
    for key, value in skipped.items():
        assert torch.equal(value, left_out[key]), key


def check_loss_scale_redo_is_refused():
    """With a loss scale, a second synced backward before state.step() cannot be redone (DDP hands the hook
    the first pass's unscaled average plus the new pass's scaled gradient): every rank raises, none hangs."""
    from dgc.amp import LossScale
    net = DDP(model())
    opt = sgd(net.module)
    state = DGCHook(net, opt, compression=DGCCompressor(0.5, min_compress_numel=1000), memory=DGCSGDMemory(),
                    loss_scale=LossScale(1024.0))
    net.register_comm_hook(state, dgc_hook)
    (x, y), (x2, y2) = batches(2)
    (torch.nn.functional.cross_entropy(net(x), y) * 1024).backward()
    try:
        (torch.nn.functional.cross_entropy(net(x2), y2) * 1024).backward()
    except RuntimeError as error:
        assert "accumulate the step's earlier passes under ddp.no_sync()" in str(error), error
    else:
        raise AssertionError("a second synced backward with a loss scale was accepted")


def check_stop_and_forward_only_steps_leave_the_buffers_right():
    """A "stop" (raised by state.step(), once every bucket is done) puts the buffers back and ends the step (the next step snapshots anew);
    a step after a skipped one that runs a forward but no backward is not skipped (its buffers stay)."""
    def bn_net(nonfinite):
        torch.manual_seed(0)
        net = DDP(torch.nn.Sequential(torch.nn.Linear(32, 64), torch.nn.BatchNorm1d(64), torch.nn.Linear(64, 5)))
        opt = sgd(net.module)
        state = DGCHook(net, opt, compression=DGCCompressor(0.5, min_compress_numel=1000), memory=DGCSGDMemory(),
                        nonfinite=nonfinite)
        net.register_comm_hook(state, dgc_hook)
        return net, opt, state

    (x, y), (x2, y2) = batches(2)
    bad = x.clone()
    if RANK == SIZE - 1:
        bad[0, 0] = float("nan")
    net, opt, state = bn_net("stop")
    before = copy.deepcopy(net.module.state_dict())
    torch.nn.functional.cross_entropy(net(bad), y).backward()
    try:
        state.step(opt)
    except FloatingPointError:
        pass
    else:
        raise AssertionError("nonfinite='stop' did not stop")
    for key, value in net.module.state_dict().items():
        assert torch.equal(value, before[key]), key
    net, opt, state = bn_net("skip")
    torch.nn.functional.cross_entropy(net(bad), y).backward()
    state.step(opt)
    assert state.step_skipped
    opt.zero_grad()
    net(x2)
    moved = copy.deepcopy(net.module.state_dict())
    state.step(opt)
    assert not state.step_skipped
    for key, value in net.module.state_dict().items():
        assert torch.equal(value, moved[key]), key


def check_overlap_gives_the_synchronous_bits():
    def conv_bn():
        torch.manual_seed(0)
        return torch.nn.Sequential(torch.nn.Conv2d(3, 16, 3), torch.nn.BatchNorm2d(16), torch.nn.ReLU(),
                                   torch.nn.Conv2d(16, 16, 3), torch.nn.BatchNorm2d(16), torch.nn.ReLU(),
                                   torch.nn.Flatten(), torch.nn.Linear(256, 10))

    gen = torch.Generator().manual_seed(1000 * RANK)
    data = [(torch.randn(8, 3, 8, 8, generator=gen), torch.randint(10, (8,), generator=gen)) for _ in range(4)]
    configs = {"dgc": lambda: dict(compression=DGCCompressor(0.05, min_compress_numel=256), memory=DGCSGDMemory()),
               "powersgd": lambda: dict(compression=PowerSGDCompressor(2, min_compress_numel=256),
                                        memory=ResidualMemory()),
               "fp16": lambda: dict(dense_compression=FP16Compressor()),
               "dgc fused": lambda: dict(compression=DGCCompressor(0.05, min_compress_numel=256),
                                         memory=DGCSGDMemory(), communicator=FusedCommunicator(TorchCommunicator())),
               "powersgd fused": lambda: dict(compression=PowerSGDCompressor(2, min_compress_numel=256),
                                              memory=ResidualMemory(),
                                              communicator=FusedCommunicator(TorchCommunicator()))}

    def run(config, overlap, late=False):
        net = DDP(conv_bn(), bucket_cap_mb=0.004)       # 4 kB: the three weights in buckets of their own
        opt = sgd(net.module)
        state = DGCHook(net, opt, overlap=overlap, **configs[config]())
        assert state.overlap == overlap, config
        futures, in_flight = [], []

        def watching(state, bucket):
            if bucket.index() == 0:
                futures.clear()
            if bucket.is_last():
                in_flight.append(sum(not f.done() for f in futures))
            futures.append(dgc_hook(state, bucket))
            return futures[-1]
        net.register_comm_hook(state, watching)
        for step, (x, y) in enumerate(data):
            state.exchange.measure_error = step == 2
            opt.zero_grad()
            out = net(x)
            if late and RANK == 1:      # rank 1's gradients come late: rank 0's first bucket waits for them
                out.register_hook(lambda g: time.sleep(0.3))
            torch.nn.functional.cross_entropy(out, y).backward()
            state.step(opt)
            if step == 2 and config.startswith("powersgd"):
                assert state.last_exchange["relative_error"] is not None
        assert len(futures) >= 3, f"{config}: {len(futures)} DDP buckets; the check needs several"
        return net.module.state_dict(), state.last_exchange, in_flight

    for config in configs:
        (overlapped, stats, _), (synchronous, sync_stats, _) = run(config, True), run(config, False)
        for key, value in synchronous.items():
            assert torch.equal(value, overlapped[key]), (config, key, (value - overlapped[key]).abs().max())
        assert stats["bytes_sent"] == sync_stats["bytes_sent"], (config, stats, sync_stats)
    in_flight = run("powersgd", True, late=True)[2]
    if RANK == 0:       # from the second step on (DDP rebuilds its buckets in the first step's order after it)
        assert all(n > 0 for n in in_flight[1:]), f"no bucket in flight when the last one started: {in_flight}"
    assert run("dgc", False, late=True)[2] == [0] * len(data)   # the synchronous hook: each bucket done in it


def check_allgather_forms():
    """TorchCommunicator gathers into one tensor; the tensor-list form only once the backend refused that."""
    import dgc.torch.communicator as module
    from dgc.compressors.base import Payload

    def refuse(*args, **kwargs):
        raise RuntimeError("no support for the one-tensor allgather in this backend")

    comm, listed, list_form, single = TorchCommunicator(), [], dist.all_gather, module._gather_single
    expected = torch.arange(SIZE, dtype=torch.float32).repeat_interleave(2)[:, None].expand(-1, 3)
    dist.all_gather = lambda *args, **kwargs: listed.append(1) or list_form(*args, **kwargs)
    try:
        for refused in (False, True, True):
            module._gather_single = refuse if refused else single
            out = comm.wait(comm.start(Payload(torch.full((2, 3), float(RANK)), "allgather", 6), "g"))
            assert torch.equal(out, expected), out
        assert listed == [1, 1] and not comm._single, (listed, comm._single)
    finally:
        dist.all_gather, module._gather_single = list_form, single


if SIZE == 2:       # what follows does not depend on the world size: one launch is enough
    check_allgather_forms()
    check_overlap_gives_the_synchronous_bits()
    check_a_direct_optimizer_step_is_refused()
    check_loss_scale_redo_is_refused()
    check_stop_and_forward_only_steps_leave_the_buffers_right()
    check_accumulation_and_unused(2, no_sync=True, branch_on=lambda step, i: True)
    check_accumulation_and_unused(2, no_sync=False, branch_on=lambda step, i: True)
    check_accumulation_and_unused(1, no_sync=False, branch_on=lambda step, i: step % 3 == 0)
    check_accumulation_and_unused(1, no_sync=False, branch_on=lambda step, i: step % 3 == 0, set_to_none=False)
    check_accumulation_and_unused(3, no_sync=False, branch_on=lambda step, i: step % 2 == 0 and i == 1)


check_equivalence(nesterov=False)
check_equivalence(nesterov=True)
check_conservation_and_replicas()
check_nonfinite_skip()
check_nonfinite_input_restores_buffers()
dist.barrier()
print(f"rank {RANK}/{SIZE}: ddp checks ok", flush=True)
close_process_group()
