"""Non-finite gradients with N logical workers in one process: a step in which any rank has NaN/Inf is skipped
on every rank as if its batch had been left out (memory and compressor state rolled back, bit for bit), or
stops every rank; the memory's transactions themselves; a commit that leaves unused parameters as they were;
the cost of the step's snapshot."""
import pathlib

import pytest
import torch

from dgc.compressors.dgc import DGCCompressor
from dgc.compressors.powersgd import PowerSGDCompressor
from dgc.compressors.randomk import RandomKCompressor
from dgc.compressors.signum import SignumCompressor
from dgc.compressors.topk import TopKCompressor
from dgc.exchange import Exchange
from dgc.fused import FusedCommunicator
from dgc.inprocess import InProcessGroup
from dgc.memory import DGCSGDMemory, Memory, ResidualMemory
from conftest import COMPRESSION_CONFIGS
from training.config import load_configs

SHAPES = {"conv": (16, 8, 3, 3), "fc": (30, 64), "bias": (30,)}
RANKS = 3


def named():
    return [(n, torch.nn.Parameter(torch.zeros(s))) for n, s in SHAPES.items()]


def grads(rank, step, bad=None):
    gen = torch.Generator().manual_seed(97 * rank + step)
    g = {n: torch.randn(s, generator=gen) for n, s in SHAPES.items()}
    if bad is not None:
        g[bad[0]].view(-1)[3] = bad[1]
    return g


def run(make, steps, poison=None, local_size=None):
    """Every rank's averages of the steps that counted, the skip decisions, and its final memory and
    compressor state. ``poison``: (step, rank, name, value) put into that rank's gradient."""
    def worker(comm):
        compressor, memory = make()
        ex = Exchange(named(), comm, compressor, memory, nonfinite="skip")
        averages, skipped = [], []
        for step in steps:
            bad = (poison[2], poison[3]) if poison and (step, comm.rank) == poison[:2] else None
            g = grads(comm.rank, step, bad)
            ex.finish([ex.start(n, t) for n, t in g.items()])
            skipped.append(ex.end_step())
            if not skipped[-1]:
                averages.append(g)
        return averages, skipped, ex.memory.state_dict(), ex.compressor.state_dict(), ex.skipped_steps
    return InProcessGroup(RANKS).run(worker)


MAKERS = {
    "dgc+momentum": lambda: (DGCCompressor(0.05, min_compress_numel=100), DGCSGDMemory(momentum=0.9)),
    "topk+residual": lambda: (TopKCompressor(0.05, min_compress_numel=100), ResidualMemory()),
    "powersgd": lambda: (PowerSGDCompressor(rank=2, min_compress_numel=100), ResidualMemory()),
    "signum": lambda: (SignumCompressor(min_compress_numel=100), Memory()),
    "randomk": lambda: (RandomKCompressor(0.05, min_compress_numel=100), ResidualMemory()),
}


def assert_same_state(a, b):
    if isinstance(a, dict):
        assert a.keys() == b.keys()
        for k in a:
            assert_same_state(a[k], b[k])
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            assert_same_state(x, y)
    elif isinstance(a, torch.Tensor):
        assert torch.equal(a, b)
    else:
        assert a == b


@pytest.mark.parametrize("make", MAKERS.values(), ids=MAKERS.keys())
@pytest.mark.parametrize("value", [float("nan"), float("inf")], ids=["nan", "inf"])
def test_a_bad_step_on_one_rank_is_skipped_everywhere_as_if_left_out(make, value):
    torch.manual_seed(0)
    poisoned = run(make, [0, 1, 2, 3], poison=(1, 1, "conv", value))
    torch.manual_seed(0)
    left_out = run(make, [0, 2, 3])
    for rank in range(RANKS):
        averages, skipped, memory, compressor, count = poisoned[rank]
        assert skipped == [False, True, False, False] and count == 1
        assert_same_state(averages, left_out[rank][0])
        assert_same_state(memory, left_out[rank][2])
        assert_same_state(compressor, left_out[rank][3])


def test_a_bad_dense_tensor_is_caught_too():
    results = run(MAKERS["topk+residual"], [0, 1], poison=(0, 2, "bias", float("-inf")))
    assert all(r[1] == [True, False] for r in results)


def test_stop_raises_on_every_rank_and_names_the_parameter_where_it_was():
    messages = {}

    def worker(comm):
        ex = Exchange(named(), comm, TopKCompressor(0.05, min_compress_numel=100), ResidualMemory(), nonfinite="stop")
        g = grads(comm.rank, 0, ("fc", float("nan")) if comm.rank == 2 else None)
        ex.finish([ex.start(n, t) for n, t in g.items()])
        with pytest.raises(FloatingPointError) as error:
            ex.end_step()
        messages[comm.rank] = str(error.value)
        assert all(not r.any() for r in ex.memory.state_dict()["residuals"].values())   # as before the step
    InProcessGroup(RANKS).run(worker)
    assert "on this rank in ['fc']" in messages[2]
    assert "on another rank" in messages[0] and "on another rank" in messages[1]


def test_hierarchical_bad_gradient_on_a_non_leader_is_skipped_by_every_rank():
    world, leaders = InProcessGroup(4), InProcessGroup(2)
    hosts = [InProcessGroup(2), InProcessGroup(2)]

    def worker(comm):
        host, local_rank = divmod(comm.rank, 2)
        ex = Exchange(named(), leaders.communicator(host) if local_rank == 0 else None,
                      TopKCompressor(0.05, min_compress_numel=100), ResidualMemory(),
                      local=hosts[host].communicator(local_rank), nonfinite="skip")
        decisions = []
        for step in range(2):
            g = grads(comm.rank, step, ("fc", float("nan")) if (step, comm.rank) == (0, 3) else None)
            ex.finish([ex.start(n, t) for n, t in g.items()])
            decisions.append(ex.end_step())
        return decisions, ex.memory.state_dict()
    results = world.run(worker)
    assert all(d == [True, False] for d, _ in results)
    assert set(results[0][1]["residuals"]) == {"conv", "fc"} and results[1][1]["residuals"] == {}
    assert all(r.any() for r in results[0][1]["residuals"].values())     # step 1 counted


def test_invalid_policy_is_named():
    with pytest.raises(ValueError, match="nonfinite='sometimes'"):
        Exchange(named(), InProcessGroup(1).communicator(0), nonfinite="sometimes")


@pytest.mark.parametrize("memory", [ResidualMemory(), DGCSGDMemory(momentum=0.9)], ids=["residual", "dgc"])
def test_memory_transaction_commits_or_rolls_back(memory):
    memory.transactional = True
    grad = torch.arange(6.0)
    memory.compensate(grad, "w")
    memory.commit()
    before = {k: {n: t.clone() for n, t in v.items()} for k, v in memory.state_dict().items()}
    memory.compensate(grad * 5, "w")
    memory.rollback()
    assert_same_state(memory.state_dict(), before)
    memory.compensate(grad * 5, "w")
    memory.commit()
    assert not torch.equal(next(iter(memory.state_dict().values()))["w"], next(iter(before.values()))["w"])


def test_loss_scaled_gradients_enter_the_memory_unscaled_and_an_overflow_changes_nothing():
    """fp16 loss scaling: the exchange divides by the scale before the memory, so a scaled run's residuals
    equal an unscaled run's; an overflow step (inf on one rank) leaves every rank's residuals as they were and
    halves the scale; growth after growth_interval good steps."""
    from dgc.amp import LossScale

    def worker(comm, scaled):
        scale = LossScale(init_scale=1024.0, growth_interval=2) if scaled else None
        ex = Exchange(named(), comm, TopKCompressor(0.05, min_compress_numel=100), ResidualMemory(),
                      nonfinite="skip", loss_scale=scale)
        states, scales = [], []
        for step in range(4):
            factor = scale.value if scaled else 1.0
            g = {n: t * factor for n, t in grads(comm.rank, step).items()}
            if scaled and step == 1 and comm.rank == 0:
                g["fc"].view(-1)[0] = float("inf")        # the overflow fp16 backward produces
            ex.finish([ex.start(n, t) for n, t in g.items()])
            ex.end_step()
            states.append({n: t.clone() for n, t in ex.memory.state_dict()["residuals"].items()})
            scales.append(scale.value if scaled else None)
        return states, scales
    scaled = InProcessGroup(RANKS).run(lambda comm: worker(comm, True))
    plain = InProcessGroup(RANKS).run(lambda comm: worker(comm, False))
    for rank in range(RANKS):
        states, scales = scaled[rank]
        assert scales == [1024.0, 512.0, 512.0, 1024.0]
        assert_same_state(states[1], states[0])                       # the overflow step changed nothing
        for name in ("conv", "fc"):                                   # scaled by a power of 2: exact
            assert torch.equal(states[0][name], plain[rank][0][0][name])


def test_loss_scale_needs_a_nonfinite_policy_and_sane_arguments():
    from dgc.amp import LossScale
    with pytest.raises(ValueError, match="loss_scale needs nonfinite"):
        Exchange(named(), InProcessGroup(1).communicator(0), loss_scale=LossScale())
    with pytest.raises(ValueError, match="backoff_factor=2"):
        LossScale(backoff_factor=2)
    with pytest.raises(ValueError, match=r"init_scale='x' must be a number"):
        LossScale(init_scale="x")


@pytest.mark.parametrize("fuse", [False, True], ids=["plain", "fused"])
def test_ranks_whose_gradients_arrive_in_different_orders_agree_on_the_flag(fuse):
    """The flag goes the way of the payload whose name sorts first, not of the one this rank started first:
    odd ranks start their tensors in reverse order (a compressed one first on even ranks, a dense one first
    on odd ranks), and every rank still agrees on every step (a mismatch raises or hangs)."""
    def worker(comm):
        comm = FusedCommunicator(comm) if fuse else comm
        ex = Exchange(named(), comm, TopKCompressor(0.05, min_compress_numel=100), ResidualMemory(), nonfinite="skip")
        order = list(SHAPES) if comm.rank % 2 == 0 else list(reversed(SHAPES))
        skipped = []
        for step in range(3):
            g = grads(comm.rank, step, ("fc", float("nan")) if (step, comm.rank) == (1, 1) else None)
            ex.finish([ex.start(n, g[n]) for n in order])
            skipped.append(ex.end_step())
        return skipped
    assert InProcessGroup(RANKS, timeout=10).run(worker) == [[False, True, False]] * RANKS


@pytest.mark.parametrize("make", MAKERS.values(), ids=MAKERS.keys())
def test_a_commit_leaves_the_unused_parameters_state_as_at_the_steps_start(make):
    """``commit(unused=...)`` (the DDP hook's, for parameters whose grad stayed None): the memory and compressor
    entries of "fc" are those before the step, bit for bit; those of "conv" are those of a full commit."""
    def worker(comm, unused):
        ex = Exchange(named(), comm, *make(), nonfinite="skip")
        states = []
        for step in range(3):
            ex.finish([ex.start(n, t) for n, t in grads(comm.rank, step).items()])
            assert ex.end_step(commit=False) is False
            ex.commit(unused=unused if step == 2 else ())
            states.append((_cloned(ex.memory.state_dict()), _cloned(ex.compressor.state_dict())))
        return states
    partial = InProcessGroup(RANKS).run(lambda comm: worker(comm, ["fc"]))
    full = InProcessGroup(RANKS).run(lambda comm: worker(comm, []))
    for rank in range(RANKS):
        for got, before, after in zip(partial[rank][2], partial[rank][1], full[rank][2]):
            assert_same_state(_entries(got, "fc"), _entries(before, "fc"))
            assert_same_state(_entries(got, "conv"), _entries(after, "conv"))
        changed = [(a, b) for a, b in zip(_entries(full[rank][2][0], "fc") + _entries(full[rank][2][1], "fc"),
                                          _entries(full[rank][1][0], "fc") + _entries(full[rank][1][1], "fc"))]
        assert changed and not all(torch.equal(a, b) if isinstance(a, torch.Tensor) else a == b for a, b in changed)


def _cloned(state):
    return {k: _cloned(v) for k, v in state.items()} if isinstance(state, dict) else (
        state.clone() if isinstance(state, torch.Tensor) else state)


def _entries(state, name):
    """The values keyed by ``name`` anywhere in a nested state dict, in order."""
    found = []
    for key, value in state.items():
        if key == name:
            found.append(value)
        elif isinstance(value, dict):
            found.extend(_entries(value, name))
    return found


def test_the_steps_snapshot_copies_no_model_size_state():
    """The rollback snapshot of a stateful compressor costs no copy of its state: with Signum (a momentum
    as large as the compressed tensors) a transactional step copies (clone, copy_, deepcopy, to, contiguous:
    the bytes of each copy made, seen by a TorchFunctionMode) less than a tenth of the momentum's bytes more
    than the same step without transactions."""
    from torch.overrides import TorchFunctionMode

    class CopiedBytes(TorchFunctionMode):
        count = 0

        def __torch_function__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            name = getattr(func, "__name__", "")
            if isinstance(out, torch.Tensor) and (name == "copy_" or name in ("clone", "__deepcopy__", "to",
                                                                              "contiguous")
                                                  and out.data_ptr() != args[0].data_ptr()):
                self.count += out.numel() * out.element_size()
            return out

    def copied(nonfinite):
        ex = Exchange(named(), InProcessGroup(1).communicator(0), SignumCompressor(min_compress_numel=100), Memory(),
                      nonfinite=nonfinite)
        for step in range(3):
            with CopiedBytes() as mode:
                ex.finish([ex.start(n, t) for n, t in grads(0, step).items()])
                ex.end_step()
        return mode.count
    momentum_bytes = sum(torch.Size(SHAPES[n]).numel() * 4 for n in ("conv", "fc"))
    assert copied("skip") - copied(None) < momentum_bytes / 10


ROOT = pathlib.Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("config", [p.name for p in COMPRESSION_CONFIGS])
def test_no_compressor_changes_its_state_in_place(config):
    """The step's snapshot shares the compressor's state tensors, so every compressor of configs/compression/
    must replace them, never change one in place (a skipped step would keep the change): the state_dict
    taken after a step still holds the same values after two more."""
    cfg = load_configs(["configs/digits/digitsnet.py", f"configs/compression/{config}"], root=ROOT / "configs")

    def worker(comm):
        ex = Exchange(named(), comm, cfg.train.compression(), Memory(), nonfinite="skip")
        for step in range(3):
            ex.finish([ex.start(n, t) for n, t in grads(comm.rank, step).items()])
            ex.end_step()
            if step == 0:
                shared = ex.compressor.state_dict()
                kept = _cloned(shared)
        assert_same_state(shared, kept)
    if cfg.train.compression is None:
        pytest.skip("no compressor")
    InProcessGroup(RANKS).run(worker)
