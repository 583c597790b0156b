"""The exchange pipeline with N logical workers in one process (dgc.inprocess): routing policy, checks before
anything is accumulated, several rounds per tensor, statistics, the in-process collectives themselves."""
import copy
import math

import pytest
import torch

from dgc.compressors.base import Compressor, Payload
from dgc.compressors.dgc import DGCCompressor
from dgc.compressors.powersgd import PowerSGDCompressor
from dgc.compressors.topk import TopKCompressor
from dgc.exchange import Exchange
from dgc.inprocess import InProcessGroup
from dgc.memory import DGCSGDMemory, ResidualMemory


def test_policy_compresses_matrices_and_kernels_only(device):
    named = [(name, torch.nn.Parameter(torch.zeros(shape, device=device))) for name, shape in
             (("bias", (5000,)), ("small", (10, 10)), ("big", (100, 100)), ("conv", (8, 4, 3, 3)))]
    memory = ResidualMemory()
    ex = Exchange(named, InProcessGroup(1).communicator(0), DGCCompressor(min_compress_numel=200), memory)
    assert [ex.routes[n].compressed for n, _ in named] == [False, False, True, True]
    assert ex.routes["bias"].memory is not memory and ex.routes["big"].memory is memory
    g = torch.randn(5000, device=device)
    pending = ex.start("bias", g)
    assert pending.route.compressor.__class__ is Compressor
    ex.finish([pending])
    assert "bias" not in memory.buffers["residuals"]


def test_average_lands_in_the_gradient_in_its_shape(device):
    group = InProcessGroup(3)
    grads = [torch.randn(64, 32, generator=torch.Generator().manual_seed(r)).to(device) for r in range(3)]

    def worker(comm):
        ex = Exchange([("conv", torch.nn.Parameter(torch.zeros(64, 32, device=device)))], comm,
                      DGCCompressor(compress_ratio=1.0))
        grad = grads[comm.rank].clone()
        ex.finish([ex.start("conv", grad)])
        return grad

    for result in group.run(worker):
        torch.testing.assert_close(result, sum(grads) / 3, rtol=0, atol=1e-6)


@pytest.mark.parametrize("memory", [ResidualMemory(), DGCSGDMemory(momentum=0.0)], ids=["residual", "dgcsgd"])
def test_dense_compressor_with_a_memory_sends_the_gradient_not_zeros(memory, device):
    """The dense compressor's payload is the memory's own buffer; the memory empties that buffer after
    compress, so the exchange must send a copy (an in-place send of the buffer sent zeros)."""
    grads = [torch.full((40, 40), 1.0, device=device), torch.full((40, 40), 2.0, device=device)]

    def worker(comm):
        mem = copy.deepcopy(memory)
        compressor = Compressor()
        compressor.min_compress_numel = 1
        ex = Exchange([("w", torch.nn.Parameter(torch.zeros(40, 40, device=device)))], comm, compressor, mem)
        grad = grads[comm.rank].clone()
        ex.finish([ex.start("w", grad)])
        return grad, mem.state_dict()

    for grad, state in InProcessGroup(2).run(worker):
        assert torch.equal(grad, torch.full((40, 40), 1.5, device=device))
        residual = state.get("residuals", state.get("velocities"))["w"]
        assert residual.abs().max() == 0


def test_clipping_comes_before_weight_decay_and_momentum_is_read_live(device):
    """Local clipping bounds the raw gradient (as clip_grad_norm_ would), then weight decay is folded in;
    a momentum changed in the param group after wrapping is used by the memory at the next step."""
    param = torch.nn.Parameter(torch.full((32, 32), 10.0, device=device))
    sgd = torch.optim.SGD([param], lr=0.1, momentum=0.0, weight_decay=1.0)
    memory = DGCSGDMemory(gradient_clipping=1.0, momentum_masking=False)
    ex = Exchange([("w", param)], InProcessGroup(1).communicator(0), DGCCompressor(compress_ratio=1.0), memory, sgd)
    grad = torch.full((32, 32), 100.0, device=device)
    ex.finish([ex.start("w", grad.clone())])
    u = memory.buffers["momentums"]["w"]
    torch.testing.assert_close(u, grad.view(-1) / torch.linalg.vector_norm(grad) + 10.0)
    sgd.param_groups[0]["momentum"] = 0.5
    ex.finish([ex.start("w", grad.clone())])
    assert memory.momentum == 0.5


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_gradient_is_rejected_and_never_enters_the_residual(bad, device):
    memory = ResidualMemory()
    ex = Exchange([("layer.weight", torch.nn.Parameter(torch.zeros(64, 64, device=device)))],
                  InProcessGroup(1).communicator(0), DGCCompressor(), memory)
    ex.finish([ex.start("layer.weight", torch.randn(64, 64, device=device))])
    before = memory.buffers["residuals"]["layer.weight"].clone()
    g = torch.randn(64, 64, device=device)
    g[3, 17] = bad
    with pytest.raises(FloatingPointError, match="layer.weight"):
        ex.start("layer.weight", g)
    assert torch.equal(memory.buffers["residuals"]["layer.weight"], before)


def test_unsupported_dtype_names_the_parameter():
    ex = Exchange([("emb.weight", torch.nn.Parameter(torch.zeros(64, 64)))], InProcessGroup(1).communicator(0),
                  DGCCompressor())
    with pytest.raises(TypeError, match="emb.weight"):
        ex.start("emb.weight", torch.ones(64, 64, dtype=torch.int32))


class _MeanThenRest(Compressor):
    """A two-round test compressor: round 1 allreduces the tensor's mean; round 2 allgathers each worker's
    deviation from the *global* mean at the largest |.| position only (what the memory must know then)."""

    min_compress_numel = 1

    def compress(self, tensor, name):
        return Payload(tensor.mean().reshape(1), "allreduce", 1), ("round2", tensor.view(-1))

    def decompress(self, result, ctx, out=None):
        if ctx[0] == "round2":
            tensor = ctx[1]
            mean = result.clone()
            deviation = tensor - mean
            i = deviation.abs().argmax()
            sent = torch.full_like(tensor, mean.item())
            sent[i] += deviation[i]
            return Payload(torch.stack([i.double(), deviation[i].double()]), "allgather", 2, sent), ("done", mean, tensor.numel())
        _, mean, numel = ctx
        pairs = result.view(-1, 2)
        out = torch.full((numel,), mean.item())
        for index, value in pairs:
            out[int(index)] += value.item() / pairs.shape[0]
        return out


def test_several_rounds_per_tensor_and_memory_after_the_deciding_round():
    """The payload protocol lets a compressor compute between collectives (PowerSGD's shape): the memory is
    updated when a round's payload says what was sent; results equal the hand-computed average."""
    group = InProcessGroup(2)
    grads = [torch.tensor([[1.0, 2.0], [3.0, 10.0]]), torch.tensor([[-5.0, 0.0], [1.0, 0.0]])]

    def worker(comm):
        memory = ResidualMemory()
        ex = Exchange([("w", torch.nn.Parameter(torch.zeros(2, 2)))], comm, _MeanThenRest(), memory)
        grad = grads[comm.rank].clone()
        ex.finish([ex.start("w", grad)])
        return grad, memory.buffers["residuals"]["w"].clone(), ex.collect()

    (avg0, res0, stats0), (avg1, res1, _) = group.run(worker)
    global_mean = 12 / 8
    expected = torch.full((2, 2), global_mean)
    expected[1, 1] += (10.0 - global_mean) / 2     # rank 0's largest deviation
    expected[0, 0] += (-5.0 - global_mean) / 2     # rank 1's
    torch.testing.assert_close(avg0, expected)
    assert torch.equal(avg0, avg1)
    sent0 = torch.full((4,), global_mean)
    sent0[3] = 10.0
    torch.testing.assert_close(res0, grads[0].view(-1) - sent0)
    assert stats0["bytes_sent"] == 4 + 2 * 8 and stats0["values_sent"] == 3
    assert [entry[2] for entry in group.log if entry[0] == 0] == ["allreduce", "allgather"]


def test_inprocess_collectives_are_exact_and_name_a_missing_rank(device):
    group = InProcessGroup(3, timeout=0.5)

    def worker(comm):
        total = torch.full((4,), float(comm.rank + 1), device=device)
        comm.wait(comm.start(Payload(total, "allreduce", 4), "sum"))
        mine = torch.full((comm.rank + 1,), float(comm.rank), device=device)
        gathered = comm.wait(comm.start(Payload(mine, "allgather", 1), "g"))
        return total, gathered

    for total, gathered in group.run(worker):
        assert torch.equal(total, torch.full((4,), 2.0, device=device))
        assert torch.equal(gathered, torch.tensor([0.0, 1.0, 1.0, 2.0, 2.0, 2.0], device=device))

    def lonely(comm):
        if comm.rank != 1:
            comm.wait(comm.start(Payload(torch.ones(1, device=device), "allreduce", 1), "only.some"))

    with pytest.raises(TimeoutError, match=r"ranks \[1\] never started 'only.some'"):
        group.run(lonely)
    with pytest.raises(ValueError, match="size=0"):
        InProcessGroup(0)


@pytest.mark.parametrize("compressor", [TopKCompressor(compress_ratio=0.1), PowerSGDCompressor(rank=1)],
                         ids=["topk", "powersgd"])
def test_measured_step_reports_error_against_the_dense_average(compressor, device):
    """On a measured step the exchange also averages each compressed tensor densely and reports the relative
    L2 error and SNR of the decompressed average against it (over all compressed tensors; the small dense
    tensor does not count); an unmeasured step sends nothing extra and reports None."""
    shapes = {"a": (32, 16), "b": (16, 40), "bias": (16,)}
    grads = [{n: torch.randn(s, generator=torch.Generator().manual_seed(10 * r + i)).to(device)
              for i, (n, s) in enumerate(shapes.items())} for r in range(3)]
    group = InProcessGroup(3)

    def worker(comm):
        params = [(n, torch.nn.Parameter(torch.zeros(s, device=device))) for n, s in shapes.items()]
        local = copy.deepcopy(compressor)
        local.min_compress_numel = 100
        ex = Exchange(params, comm, local, ResidualMemory())
        results = []
        for measure in (True, False):
            ex.measure_error = measure
            outs = {n: g.clone() for n, g in grads[comm.rank].items()}
            ex.finish([ex.start(n, outs[n]) for n in shapes])
            results.append((ex.collect(), outs))
        return results

    results = group.run(worker)
    (measured, outs), (plain, _) = results[0]
    dense = {n: sum(g[n] for g in grads) / 3 for n in ("a", "b")}      # step 1: nothing in the residual yet
    error = math.sqrt(sum((outs[n] - dense[n]).double().square().sum() for n in dense))
    norm = math.sqrt(sum(dense[n].double().square().sum() for n in dense))
    assert measured["relative_error"] == pytest.approx(error / norm, rel=1e-5)
    assert 0.05 < measured["relative_error"] < 1
    assert measured["snr_db"] == pytest.approx(-20 * math.log10(measured["relative_error"]))
    assert plain["relative_error"] is None and plain["snr_db"] is None
    assert all(r[0][0]["relative_error"] == measured["relative_error"] for r in results)
    references = sorted(name for _, name, _, _ in group.log if name.endswith(".reference"))
    assert references == ["a.reference"] * 3 + ["b.reference"] * 3


def test_dense_compressor_carries_the_small_tensors(device):
    """With dense_compressor=FP16Compressor the tensors too small to compress travel as fp16 (2 bytes per value),
    averaged from the fp16 values, and keep no memory; compressed tensors are unaffected."""
    from dgc.compressors.fp16 import FP16Compressor
    grads = [{"bias": torch.randn(100, generator=torch.Generator().manual_seed(r)).to(device) / 3,
              "w": torch.randn(64, 32, generator=torch.Generator().manual_seed(10 + r)).to(device)} for r in range(2)]

    def worker(comm):
        params = [(n, torch.nn.Parameter(torch.zeros_like(g))) for n, g in grads[0].items()]
        ex = Exchange(params, comm, TopKCompressor(compress_ratio=0.01), ResidualMemory(), dense_compressor=FP16Compressor())
        outs = {n: g.clone() for n, g in grads[comm.rank].items()}
        ex.finish([ex.start(n, outs[n]) for n in outs])
        return outs["bias"], ex.collect()["bytes_sent"], ex.routes["bias"].memory.keeps_state

    for bias, sent, keeps in InProcessGroup(2).run(worker):
        expected = sum(g["bias"].half().float() for g in grads) / 2
        assert torch.equal(bias, expected.half().float()) and not keeps
        assert sent == 100 * 2 + round(64 * 32 * 0.01) * 12


def test_inprocess_float16_average_prescales_as_horovod_does(device):
    """Horovod averages float16 by prescaling each value by 1/size (rounded to float16) and summing in float16:
    half of the smallest subnormal 2^-24 rounds to 0 (a tie, to even), 1.5 * 2^-24 to 2^-23; an average in
    float32 rounded once would give back 2^-24 and 3 * 2^-24. (tests/mp/collectives.py compares every dtype
    with a real Horovod average, bit for bit.)"""
    tiny = 2.0 ** -24
    sent = torch.tensor([tiny, 3 * tiny, 1.0], dtype=torch.float16, device=device)
    results = InProcessGroup(2).run(lambda comm: comm.wait(comm.start(Payload(sent.clone(), "allreduce", 3), "h")))
    for result in results:
        assert result.tolist() == [0.0, 4 * tiny, 1.0]

