"""Memories through the exchange pipeline (one worker): conservation (nothing lost, nothing invented) in fp32
and fp16, momentum correction, masking, local clipping; the plain step of DGCSGD."""
import copy

import pytest
import torch

from dgc.compressors.base import Sparse
from dgc.compressors.dgc import DGCCompressor
from dgc.compressors.threshold import ThresholdCompressor
from dgc.exchange import Exchange
from dgc.inprocess import InProcessGroup
from dgc.memory import DGCSGDMemory, ResidualMemory
from dgc.optim import DGCSGD

NUMEL = 20_000


def _exchange(memory, world_size=1, device="cpu", **kwargs):
    """One worker's exchange of a (NUMEL, 1) weight on ``device``; ``world_size`` only sets the memory's
    clipping scale."""
    ex = Exchange([("w", torch.nn.Parameter(torch.zeros(NUMEL, 1, device=device)))], InProcessGroup(1).communicator(0),
                  DGCCompressor(min_compress_numel=1, **kwargs), memory)
    memory.initialize(world_size)
    return ex


def _send(ex, g):
    """What this worker sent for gradient ``g`` (with one worker, the exchanged average is exactly that)."""
    grad = g.reshape(NUMEL, 1).clone()
    ex.finish([ex.start("w", grad)])
    return grad.view(-1)


@pytest.mark.parametrize("fp16", [False, True])
@pytest.mark.parametrize("ratio", [0.001, 0.05, 1.0])
def test_residual_memory_conserves_every_value(ratio, fp16, device):
    """sent + residual == everything accumulated, every step; in fp16 mode too: the rounding error (about
    1e-3 of a value, far above the tolerance) stays in the residual."""
    memory = ResidualMemory()
    ex = _exchange(memory, device=device, compress_ratio=ratio, fp16_values=fp16)
    gen = torch.Generator().manual_seed(0)
    total_in, total_sent = (torch.zeros(NUMEL, dtype=torch.float64, device=device) for _ in range(2))
    for _ in range(15):
        g = torch.randn(NUMEL, generator=gen).to(device)
        total_in += g.double()
        sent = _send(ex, g)
        assert torch.isfinite(sent).all()
        total_sent += sent.double()
        residual = memory.buffers["residuals"]["w"].double()
        torch.testing.assert_close(total_sent + residual, total_in, rtol=0, atol=1e-5)
    if ratio == 1.0 and not fp16:
        assert residual.abs().max() == 0
    if fp16:
        assert residual.abs().max() > 0, "fp16 rounding error must stay in the residual"


def test_fp16_clamped_value_keeps_the_excess_in_the_residual(device):
    memory = ResidualMemory()
    ex = _exchange(memory, device=device, compress_ratio=1 / NUMEL, fp16_values=True)
    g = torch.zeros(NUMEL, device=device)
    g[3] = 1e6
    sent = _send(ex, g)
    assert sent[3].item() == 65504.0
    assert memory.buffers["residuals"]["w"][3].item() == 1e6 - 65504.0
    assert _send(ex, torch.zeros(NUMEL, device=device))[3].item() == 65504.0, "the excess is sent in later steps"


@pytest.mark.parametrize("nesterov", [False, True])
@pytest.mark.parametrize("masking", [False, True])
def test_momentum_correction_conserves_and_follows_the_paper(nesterov, masking, device):
    """u = m*u + g; v += u (Nesterov: v += g + m*u); sent + v == all accumulated; masking zeroes u where sent."""
    m = 0.9
    memory = DGCSGDMemory(momentum=m, nesterov=nesterov, momentum_masking=masking)
    ex = _exchange(memory, device=device, compress_ratio=0.01)
    gen = torch.Generator().manual_seed(1)
    u_ref, total_in, total_sent = (torch.zeros(NUMEL, device=device) for _ in range(3))
    for _ in range(12):
        g = torch.randn(NUMEL, generator=gen).to(device)
        u_ref = m * u_ref + g
        total_in += g + m * u_ref if nesterov else u_ref
        sent = _send(ex, g)
        total_sent += sent
        torch.testing.assert_close(total_sent + memory.buffers["velocities"]["w"], total_in, rtol=1e-5, atol=1e-4)
        assert sent.count_nonzero() == ex.compressor.num_selects(NUMEL)
        if masking:
            u_ref[sent != 0] = 0
        torch.testing.assert_close(memory.buffers["momentums"]["w"], u_ref, rtol=1e-5, atol=1e-5)
        assert (memory.buffers["velocities"]["w"][sent != 0] == 0).all()


@pytest.mark.parametrize("workers", [1, 4, 8])
def test_local_clipping_bounds_the_averaged_gradient_not_the_share(workers, device):
    """gradient_clipping=c bounds the averaged gradient: each worker's local mean gradient is clipped to
    c * sqrt(N) (the paper's c * N**-1/2 for a share that carries the 1/N factor, times N)."""
    memory = DGCSGDMemory(momentum=0.0, gradient_clipping=2.0, momentum_masking=False)
    ex = _exchange(memory, world_size=workers, device=device, compress_ratio=0.001)
    g = torch.full((NUMEL,), 1.0, device=device)
    _send(ex, g)
    accumulated = memory.buffers["momentums"]["w"]
    assert torch.linalg.vector_norm(accumulated).item() == pytest.approx(2.0 * workers ** 0.5, rel=1e-4)
    loose = DGCSGDMemory(momentum=0.0, gradient_clipping=1e6, momentum_masking=False)
    _send(_exchange(loose, world_size=workers, device=device), g)
    assert torch.equal(loose.buffers["momentums"]["w"], g)


def test_dense_sent_form_keeps_compensated_minus_sent():
    """The quantizers' form: residual = compensated - sent, whatever was sent."""
    memory = ResidualMemory()
    memory.initialize(1)
    g = torch.randn(100)
    compensated = memory.compensate(g, "q")
    sent = g.sign() * g.abs().mean()
    memory.update("q", sent)
    torch.testing.assert_close(memory.buffers["residuals"]["q"], g - sent)
    memory.update("q", Sparse(torch.tensor([0, 5]), memory.buffers["residuals"]["q"][[0, 5]].clone()))
    assert memory.buffers["residuals"]["q"][[0, 5]].abs().max() == 0
    assert compensated is memory.buffers["residuals"]["q"]


def test_state_dict_round_trip_continues_identically(device):
    def fresh():
        return _exchange(DGCSGDMemory(momentum=0.9), device=device, compress_ratio=0.01)
    ex = fresh()
    gen = torch.Generator().manual_seed(2)
    grads = [torch.randn(NUMEL, generator=gen).to(device) for _ in range(6)]
    for g in grads[:3]:
        _send(ex, g)
    restored = fresh()
    restored.load_state_dict(copy.deepcopy(ex.state_dict()))
    for g in grads[3:]:
        torch.manual_seed(5)
        a = _send(ex, g)
        torch.manual_seed(5)
        b = _send(restored, g)
        assert torch.equal(a, b)


@pytest.mark.parametrize("kwargs,name", [({"momentum": 1.0}, "momentum"), ({"momentum": -0.1}, "momentum"),
                                         ({"gradient_clipping": 0}, "gradient_clipping")])
def test_memory_bad_arguments(kwargs, name):
    with pytest.raises(ValueError, match=name):
        DGCSGDMemory(**kwargs)


def test_memory_refuses_an_optimizer_momentum_that_contradicts_its_own():
    memory = DGCSGDMemory(momentum=0.5)
    with pytest.raises(ValueError, match=r"momentum=0.5 but the optimizer has momentum=0.9"):
        memory.follow(0.9, False)
    follower = DGCSGDMemory()
    follower.follow(0.9, True)
    assert (follower.momentum, follower.nesterov) == (0.9, True)


def test_dgcsgd_plain_step_for_compressed_and_torch_sgd_for_the_rest():
    torch.manual_seed(3)
    compressed, dense = torch.nn.Parameter(torch.randn(10, 10)), torch.nn.Parameter(torch.randn(10))
    ref = torch.nn.Parameter(dense.detach().clone())
    opt = DGCSGD([compressed, dense], lr=0.1, momentum=0.9, weight_decay=1e-2, nesterov=True)
    ref_opt = torch.optim.SGD([ref], lr=0.1, momentum=0.9, weight_decay=1e-2, nesterov=True)
    opt.compressed_params = {compressed}
    calls = []
    opt.register_step_post_hook(lambda *args: calls.append(1))
    for _ in range(3):
        before = compressed.detach().clone()
        compressed.grad, dense.grad = torch.randn(10, 10), torch.randn(10)
        ref.grad = dense.grad.clone()
        opt.step()
        ref_opt.step()
        torch.testing.assert_close(compressed.detach(), before - 0.1 * compressed.grad)
        torch.testing.assert_close(dense.detach(), ref.detach())
    assert compressed not in opt.state or "momentum_buffer" not in opt.state[compressed]
    assert len(calls) == 3, "step hooks run once per step"


@pytest.mark.parametrize("dtype,eps", [(torch.bfloat16, 2.0 ** -9), (torch.float16, 2.0 ** -12)], ids=["bf16", "fp16"])
@pytest.mark.parametrize("make,base", [(ResidualMemory, 1.0), (lambda: DGCSGDMemory(momentum=0.5), 2.0)],
                         ids=["residual", "momentum-correction"])
def test_16bit_gradients_far_below_the_residuals_resolution_accumulate_and_are_sent(dtype, eps, make, base, device):
    """A first gradient of 1 leaves a residual (velocity: about 2) below the threshold; then each step adds
    ``eps``, under half a unit in the last place of that residual in ``dtype``, so a residual kept in the
    gradient's dtype never moves. Kept in float32 it reaches the threshold within 64 steps and is sent:
    sent (float32) + residual is everything accumulated, and the average lands in the 16-bit gradient."""
    threshold = base + 64 * eps
    assert (torch.tensor(base, dtype=dtype) + eps).item() == base
    memory = make()
    param = torch.nn.Parameter(torch.zeros(4, 8, dtype=dtype, device=device))
    ex = Exchange([("w", param)], InProcessGroup(1).communicator(0),
                  ThresholdCompressor(threshold=threshold, min_compress_numel=1), memory)
    accumulated, sent, u = (torch.zeros(32, dtype=torch.float64, device=device) for _ in range(3))
    step_sent = []
    update = memory.update
    memory.update = lambda name, what: (step_sent.append(what), update(name, what))
    for step in range(80):
        grad = torch.full((4, 8), 1.0 if step == 0 else eps, dtype=dtype, device=device)
        u = u * getattr(memory, "momentum", 0.0) + grad.double().view(-1)
        accumulated += u
        ex.finish([ex.start("w", grad)])
        assert len(step_sent) <= 1      # none on a step where nothing reached the threshold
        mine = torch.zeros(32, dtype=torch.float64, device=device)
        for what in step_sent:
            assert what.values.dtype == torch.float32
            mine.index_add_(0, what.indices, what.values.double())
            if getattr(memory, "momentum_masking", False):
                u[what.indices] = 0
        step_sent.clear()
        sent += mine
        assert grad.dtype == dtype and torch.equal(grad.view(-1), mine.to(dtype))
        kept = memory.state_dict().get("residuals", memory.state_dict().get("velocities"))["w"]
        assert kept.dtype == torch.float32
        torch.testing.assert_close(sent + kept.double(), accumulated, rtol=0, atol=1e-5)
    assert sent.min() >= threshold, "the small gradients must accumulate until they are sent"
