"""Memories and DGCSGD: conservation (nothing lost, nothing invented), momentum correction, masking, clipping."""
import copy

import pytest
import torch

from dgc.compression import DGCCompressor
from dgc.memory import DGCSGDMemory, ResidualMemory
from dgc.optim import DGCSGD

NUMEL = 20_000


def _compressor(memory, world_size=1, **kwargs):
    c = DGCCompressor(memory=memory, min_compress_numel=1, **kwargs)
    c.initialize([("w", torch.nn.Parameter(torch.zeros(NUMEL, 1)))], world_size)
    return c


def _send(c, g):
    payload, ctx = c.compress(g, "w")
    return c.decompress(payload.tensor, ctx, out=torch.empty(NUMEL))


@pytest.mark.parametrize("ratio", [0.001, 0.05, 1.0])
def test_residual_memory_conserves_every_value(ratio):
    memory = ResidualMemory()
    c = _compressor(memory, compress_ratio=ratio)
    gen = torch.Generator().manual_seed(0)
    total_in, total_sent = torch.zeros(NUMEL), torch.zeros(NUMEL)
    for _ in range(15):
        g = torch.randn(NUMEL, generator=gen)
        total_in += g
        total_sent += _send(c, g)
        residual = memory.buffers["residuals"]["w"]
        torch.testing.assert_close(total_sent + residual, total_in, rtol=0, atol=1e-4)
    if ratio == 1.0:
        assert residual.abs().max() == 0


@pytest.mark.parametrize("nesterov", [False, True])
@pytest.mark.parametrize("masking", [False, True])
def test_momentum_correction_conserves_and_follows_the_paper(nesterov, masking):
    """u = m*u + g; v += u (Nesterov: v += g + m*u); sent + v == all accumulated; masking zeroes u where sent."""
    m = 0.9
    memory = DGCSGDMemory(momentum=m, nesterov=nesterov, momentum_masking=masking)
    c = _compressor(memory, compress_ratio=0.01)
    gen = torch.Generator().manual_seed(1)
    u_ref, total_in, total_sent = torch.zeros(NUMEL), torch.zeros(NUMEL), torch.zeros(NUMEL)
    for _ in range(12):
        g = torch.randn(NUMEL, generator=gen)
        u_ref = m * u_ref + g
        total_in += g + m * u_ref if nesterov else u_ref
        sent = _send(c, g)
        total_sent += sent
        torch.testing.assert_close(total_sent + memory.buffers["velocities"]["w"], total_in, rtol=1e-5, atol=1e-4)
        assert sent.count_nonzero() == c.num_selects(NUMEL)
        if masking:
            u_ref[sent != 0] = 0
        torch.testing.assert_close(memory.buffers["momentums"]["w"], u_ref, rtol=1e-5, atol=1e-5)
        assert (memory.buffers["velocities"]["w"][sent != 0] == 0).all()


def test_local_clipping_scales_threshold_by_inverse_sqrt_workers():
    memory = DGCSGDMemory(momentum=0.0, gradient_clipping=2.0, momentum_masking=False)
    c = _compressor(memory, world_size=4, compress_ratio=0.001)
    g = torch.full((NUMEL,), 1.0)
    c.compress(g, "w")
    accumulated = memory.buffers["momentums"]["w"]
    assert torch.linalg.vector_norm(accumulated).item() == pytest.approx(2.0 / 4 ** 0.5, rel=1e-4)
    small = DGCSGDMemory(momentum=0.0, gradient_clipping=1e6, momentum_masking=False)
    c2 = _compressor(small, world_size=4)
    c2.compress(g, "w")
    assert torch.equal(small.buffers["momentums"]["w"], g)


def test_state_dict_round_trip_continues_identically():
    def fresh():
        return _compressor(DGCSGDMemory(momentum=0.9), compress_ratio=0.01)
    c = fresh()
    gen = torch.Generator().manual_seed(2)
    grads = [torch.randn(NUMEL, generator=gen) for _ in range(6)]
    for g in grads[:3]:
        _send(c, g)
    restored = fresh()
    restored.load_state_dict(copy.deepcopy(c.state_dict()))
    for g in grads[3:]:
        torch.manual_seed(5)
        a = _send(c, g.clone())
        torch.manual_seed(5)
        b = _send(restored, g.clone())
        assert torch.equal(a, b)


@pytest.mark.parametrize("kwargs,name", [({"momentum": 1.0}, "momentum"), ({"momentum": -0.1}, "momentum"),
                                         ({"gradient_clipping": 0}, "gradient_clipping")])
def test_memory_bad_arguments(kwargs, name):
    with pytest.raises(ValueError, match=name):
        DGCSGDMemory(**kwargs)


def test_dgcsgd_plain_step_for_compressed_and_torch_sgd_for_the_rest():
    torch.manual_seed(3)
    compressed, dense = torch.nn.Parameter(torch.randn(10, 10)), torch.nn.Parameter(torch.randn(10))
    ref = torch.nn.Parameter(dense.detach().clone())
    opt = DGCSGD([compressed, dense], lr=0.1, momentum=0.9, weight_decay=1e-2, nesterov=True)
    ref_opt = torch.optim.SGD([ref], lr=0.1, momentum=0.9, weight_decay=1e-2, nesterov=True)
    opt.compressed_params = {compressed}
    for _ in range(3):
        before = compressed.detach().clone()
        compressed.grad, dense.grad = torch.randn(10, 10), torch.randn(10)
        ref.grad = dense.grad.clone()
        opt.step()
        ref_opt.step()
        torch.testing.assert_close(compressed.detach(), before - 0.1 * compressed.grad)
        torch.testing.assert_close(dense.detach(), ref.detach())
    assert compressed not in opt.state or "momentum_buffer" not in opt.state[compressed]
