"""The hot path does not make the host wait for the GPU per tensor: one training step of ResNet-20 (BatchNorm;
gradients in backward order) through dgc.horovod.DistributedOptimizer, with every compression config as
train.py loads it, makes at most 2 GPU->host syncs in all (the step's non-finite decision, read once), or
for the sparsifiers whose candidate count decides the payload (DGC, threshold) at most one per compressed
tensor plus 2. Counted on the CPU by :class:`host_syncs.HostSyncCounter` over the whole step (zero_grad,
forward, backward, optimizer.step(): the exchange runs in the backward hooks and the step). The step's
non-finite flag is made on the device, not copied from a host value."""
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import train
from conftest import COMPRESSION_CONFIGS, ROOT
from dgc.exchange import Exchange
from dgc.horovod import DistributedOptimizer
from dgc.inprocess import InProcessGroup
from host_syncs import HostSyncCounter
from training.config import load_configs

COMPRESSION = COMPRESSION_CONFIGS
DGC = [p for p in sorted((ROOT / "configs" / "dgc").glob("*.py")) if p.stem != "hierarchical"]
"""configs/dgc/ on top of its __init__.py (the hierarchical exchange needs host communicators: not here)."""
CASES = {f"compression/{p.stem}": ([p], {}) for p in COMPRESSION}
CASES.update({f"dgc/{p.stem}": ([ROOT / "configs" / "dgc" / "__init__.py"] + ([p] if p.stem != "__init__" else []), {})
              for p in DGC})
CASES["dgc/__init__+fused"] = ([ROOT / "configs" / "dgc" / "__init__.py"], {"fuse_exchange": True})
CASES["dgc/__init__+amp-fp16"] = ([ROOT / "configs" / "dgc" / "__init__.py"], {"amp": "fp16"})
CASES["compression/topk+amp-fp16"] = ([ROOT / "configs" / "compression" / "topk.py"], {"amp": "fp16"})
PER_TENSOR = ("DGCCompressor", "ThresholdCompressor")
"""Compressors allowed one sync per compressed tensor: the count of candidates above their threshold."""


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """ResNet-20 on 2 images: one intra-op thread is as fast and does not thrash a shared machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_the_counter_counts_what_syncs_and_nothing_else():
    x, repeats = torch.randn(16), torch.tensor([1, 2, 0])
    cases = {"item": (lambda: x.sum().item(), ["_local_scalar_dense"]),
             "if": (lambda: 1 if x.sum() > 0 else 0, ["_local_scalar_dense"]),
             "equal": (lambda: torch.equal(x, x), ["equal"]),
             "nonzero": (lambda: (x > 0).nonzero(), ["nonzero"]),
             "mask index": (lambda: x[x > 0], ["index (bool mask)"]),
             "repeat_interleave": (lambda: torch.arange(3).repeat_interleave(repeats), ["repeat_interleave"]),
             "bincount": (lambda: torch.bincount(repeats), ["bincount"]),
             "tolist": (lambda: repeats.tolist(), ["tolist"]),
             "sized repeat_interleave": (lambda: torch.arange(3).repeat_interleave(repeats, output_size=3), []),
             "nonzero_static": (lambda: torch.nonzero_static(x > 0, size=4), []),
             "device math": (lambda: torch.where(torch.isfinite(x.sum()), x, 0).topk(3).indices, []),
             "int index": (lambda: x[repeats], [])}
    for what, (run, expected) in cases.items():
        with HostSyncCounter() as syncs:
            run()
        assert syncs.ops == expected and syncs.count == len(expected), what
    assert repeats.tolist() == [1, 2, 0], "tolist is restored after the counter"


def optimizer_for(case, device):
    files, overrides = CASES[case]
    cfg = load_configs([ROOT / "configs" / "cifar" / "resnet20.py", *files], root=ROOT / "configs")
    for key, value in overrides.items():
        setattr(cfg.train, key, value)
    torch.manual_seed(0)
    net = cfg.model().to(device)
    communicator = train.fused(cfg, InProcessGroup(1).communicator(0))
    optimizer = DistributedOptimizer(train.scaled_optimizer(cfg, net, 1), named_parameters=net.named_parameters(),
                                     communicator=communicator, model=net, **train.exchange_options(cfg))
    return net, optimizer


def step(net, optimizer, generator, device, poison=False):
    """One training step on 2 random CIFAR-sized images (``poison``: a NaN in the input)."""
    x, y = torch.randn(2, 3, 32, 32, generator=generator), torch.randint(10, (2,), generator=generator)
    if poison:
        x[0, 0, 0, 0] = float("nan")
    optimizer.zero_grad()
    loss = torch.nn.functional.cross_entropy(net(x.to(device)), y.to(device))
    scale = optimizer.exchange.loss_scale
    (loss * scale.value if scale is not None else loss).backward()
    optimizer.step()


def budget(optimizer):
    exchange = optimizer.exchange
    if type(exchange.compressor).__name__ in PER_TENSOR:
        return sum(route.compressed for route in exchange.routes.values()) + 2
    return 2


@pytest.mark.parametrize("case", CASES)
def test_one_resnet20_step_keeps_the_host_sync_budget(case, device):
    net, optimizer = optimizer_for(case, device)
    generator = torch.Generator().manual_seed(0)
    step(net, optimizer, generator, device)     # warm-up: the optimizer's state, the memory's buffers
    with HostSyncCounter() as syncs:
        step(net, optimizer, generator, device)
    assert optimizer.skipped_steps == 0
    limit = budget(optimizer)
    assert syncs.count <= limit, f"{case}: {syncs.count} host syncs in one step, budget {limit}: {syncs.ops}"


@pytest.mark.parametrize("case", ["compression/topk", "dgc/__init__"])
def test_a_skipped_step_keeps_the_budget_too(case, device):
    """A NaN reaches every gradient: the step is still skipped (decided on the device, read once)."""
    net, optimizer = optimizer_for(case, device)
    generator = torch.Generator().manual_seed(0)
    step(net, optimizer, generator, device)
    before = [p.detach().clone() for p in net.parameters()]
    with HostSyncCounter() as syncs:
        step(net, optimizer, generator, device, poison=True)
    assert optimizer.skipped_steps == 1
    assert all(torch.equal(p, q) for p, q in zip(net.parameters(), before)), "a skipped step moved the weights"
    assert syncs.count <= budget(optimizer), f"{case}: {syncs.count} host syncs: {syncs.ops}"


class _Ops(TorchDispatchMode):
    """Records the name of every aten op run under it."""

    def __init__(self):
        super().__init__()
        self.names = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.names.append(func.overloadpacket.__name__)
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("bad", [False, True], ids=["finite", "nan"])
def test_the_flag_is_made_on_the_device_not_copied_from_a_host_value(bad, device):
    """The step's flag comes from the gradients' device flag (or a fill on the device before any gradient):
    no tensor from Python data (``torch.tensor([...], device=cuda)`` is a blocking host-to-device copy)."""
    param = torch.nn.Parameter(torch.zeros(8, device=device))
    exchange = Exchange([("w", param)], InProcessGroup(1).communicator(0), nonfinite="skip")
    with _Ops() as ops:
        empty = exchange._flag_tensor(torch.float16)
    grad = torch.ones(8, device=device)
    grad[3] = float("nan") if bad else 1.0
    exchange.finish([exchange.start("w", grad)])
    with _Ops() as more:
        flag = exchange._flag_tensor(torch.float16)
    assert "lift_fresh" not in ops.names + more.names
    assert empty.tolist() == [0.0] and flag.tolist() == [float(bad)] and flag.device == param.device
    assert exchange.end_step() == bad
