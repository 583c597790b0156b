"""Single-process tests of the DGC math: selection, encoding, exchange arithmetic, warm-up, bad input."""
import math

import pytest
import torch

from dgc.compression import DGCCompressor, Compressor
from dgc.memory import Memory, ResidualMemory


def _named(numel, name="w"):
    return [(name, torch.nn.Parameter(torch.zeros(numel, 1)))]


def _compressor(numel, name="w", world_size=1, **kwargs):
    c = DGCCompressor(min_compress_numel=1, **kwargs)
    c.initialize(_named(numel, name), world_size)
    return c


def _dense(c, payload, ctx, numel):
    return c.decompress(payload.tensor, ctx, out=torch.empty(numel))


def _assert_exact_topk(x, idx, k):
    assert idx.numel() == k
    assert torch.unique(idx).numel() == k, "indices must be distinct"
    selected = torch.zeros(x.numel(), dtype=torch.bool)
    selected[idx] = True
    if k < x.numel():
        assert x[selected].abs().min() >= x[~selected].abs().max()


def _heavy_tailed(n, gen):
    return torch.distributions.Cauchy(0.0, 1.0).sample((n,)) * torch.rand(n, generator=gen)


@pytest.mark.parametrize("numel", [1, 2, 7, 1000, 2047, 5000, 100_003, 1_000_000, 10_000_000])
@pytest.mark.parametrize("kind", ["normal", "heavy", "constant"])
@pytest.mark.parametrize("strided", [True, False])
def test_selection_sends_exactly_k_largest(numel, kind, strided):
    gen = torch.Generator().manual_seed(numel)
    if kind == "normal":
        x = torch.randn(numel, generator=gen)
    elif kind == "heavy":
        torch.manual_seed(numel)
        x = _heavy_tailed(numel, gen)
    else:
        x = torch.full((numel,), -0.5)
    c = _compressor(numel, strided_sample=strided)
    k = c.num_selects(numel)
    assert k == max(1, round(numel * 0.001))
    lower, upper = c.compress_lower_bound * k, c.compress_upper_bound * k
    idx = c.select(x, k)
    assert lower <= idx.numel() <= upper
    _assert_exact_topk(x, idx, k)


def _fixed_sample(value):
    def sample(self, x, num_samples):
        return torch.full((num_samples,), value)
    return sample


@pytest.mark.parametrize("iters", [0, 3, 30])
def test_threshold_adaptation_and_exact_fallback(monkeypatch, iters):
    """A sample that overestimates the threshold forces rescans, then the exact fallback; still exact."""
    x = torch.randn(200_000, generator=torch.Generator().manual_seed(1))
    monkeypatch.setattr(DGCCompressor, "_sample", _fixed_sample(100.0))
    c = _compressor(x.numel(), max_adaptation_iters=iters)
    _assert_exact_topk(x, c.select(x, 200), 200)


def test_resample_false_keeps_k_candidates_above_threshold(monkeypatch):
    x = torch.randn(200_000, generator=torch.Generator().manual_seed(2))
    monkeypatch.setattr(DGCCompressor, "_sample", _fixed_sample(2.0))
    c = _compressor(x.numel(), resample=False)
    idx = c.select(x, 200)
    assert idx.numel() == 200 and torch.unique(idx).numel() == 200
    assert (x[idx].abs() >= 2.0).all()


@pytest.mark.parametrize("fp16,int32,value_bytes,index_bytes",
                         [(False, False, 4, 8), (True, False, 2, 8), (False, True, 4, 4), (True, True, 2, 4)])
def test_encodings_round_trip(fp16, int32, value_bytes, index_bytes):
    numel = 50_000
    x = torch.randn(numel, generator=torch.Generator().manual_seed(3))
    c = _compressor(numel, fp16_values=fp16, int32_indices=int32, compress_ratio=0.01)
    payload, ctx = c.compress(x.clone(), "w")
    k = c.num_selects(numel)
    assert payload.collective == "allgather" and payload.num_values == k
    assert payload.tensor.dtype == torch.uint8 and payload.tensor.numel() == k * (value_bytes + index_bytes)
    dense = _dense(c, payload, ctx, numel)
    assert dense.dtype == torch.float32
    idx = dense.nonzero().view(-1)
    _assert_exact_topk(x, idx, k)
    expected = x[idx].half().float() if fp16 else x[idx]
    assert torch.equal(dense[idx], expected)


def test_fp16_values_accumulate_in_fp32():
    """Six workers each sending 60000 at one index: fp16 would overflow (65504) if summed before casting."""
    numel = 4096
    c = _compressor(numel, world_size=6, fp16_values=True, compress_ratio=1 / numel)
    x = torch.zeros(numel)
    x[5] = 60000.0
    payload, ctx = c.compress(x, "w")
    dense = c.decompress(payload.tensor.repeat(6), ctx, out=torch.empty(numel))
    assert dense[5].item() == 60000.0 and dense.abs().sum().item() == 60000.0


def test_exchange_average_of_overlapping_and_disjoint_workers():
    """Decompressing the allgathered payloads equals the mean of every worker's sparse tensor."""
    numel, workers = 10_000, 3
    c = _compressor(numel, world_size=workers, compress_ratio=0.002)
    base = torch.zeros(numel)
    payloads, sparse = [], []
    for w in range(workers):
        x = torch.randn(numel, generator=torch.Generator().manual_seed(w)) * 0.01
        x[:10] = 5.0 + w             # every worker sends indices 0..9 (overlap)
        x[100 + 10 * w:110 + 10 * w] = -7.0   # and ten indices only it sends (disjoint)
        payload, ctx = c.compress(x, "w")
        payloads.append(payload.tensor)
        expected = base.clone()
        expected[:10] = x[:10]
        expected[100 + 10 * w:110 + 10 * w] = -7.0
        sparse.append(expected)
    dense = c.decompress(torch.cat(payloads), ctx, out=torch.empty(numel))
    torch.testing.assert_close(dense, torch.stack(sparse).mean(0), rtol=0, atol=1e-6)


def test_decompress_writes_shaped_output():
    c = DGCCompressor(min_compress_numel=1)
    p = torch.nn.Parameter(torch.zeros(64, 32))
    c.initialize([("conv", p)], 1)
    g = torch.randn(64, 32)
    payload, ctx = c.compress(g, "conv")
    out = torch.empty(64, 32)
    assert c.decompress(payload.tensor, ctx, out=out) is out
    assert out.count_nonzero().item() == c.num_selects(g.numel())


def test_small_and_1d_tensors_go_dense():
    c = DGCCompressor(min_compress_numel=1024)
    named = [("bias", torch.nn.Parameter(torch.zeros(5000))), ("small", torch.nn.Parameter(torch.zeros(10, 10))),
             ("big", torch.nn.Parameter(torch.zeros(100, 100)))]
    c.initialize(named, 1)
    assert [c.is_compressed(n) for n, _ in named] == [False, False, True]
    g = torch.randn(5000)
    payload, ctx = c.compress(g, "bias")
    assert payload.collective == "allreduce" and payload.tensor is g and ctx is None


def test_warmup_schedule_matches_paper():
    c = DGCCompressor(compress_ratio=0.001, warmup_epochs=4)
    ratios = [c.warmup_compress_ratio(e) for e in range(6)]
    for got, paper in zip(ratios, [0.25, 0.0625, 0.015625, 0.004, 0.001, 0.001]):
        assert got == pytest.approx(paper, rel=0.03)
    assert ratios[4] == ratios[5] == 0.001
    assert c.warmup_compress_ratio(0.5) == pytest.approx(0.001 ** (1.5 / 5))
    listed = DGCCompressor(compress_ratio=0.001, warmup_epochs=2, warmup_coeff=[0.3, 0.01])
    assert [listed.warmup_compress_ratio(e) for e in range(3)] == [0.3, 0.01, 0.001]
    assert DGCCompressor(warmup_epochs=-1).warmup_compress_ratio(0) == 0.001


def test_warmup_changes_k():
    c = _compressor(100_000, warmup_epochs=4)
    c.warmup_compress_ratio(0)
    assert c.num_selects(100_000) == round(100_000 * 0.001 ** 0.2)


@pytest.mark.parametrize("kwargs,name", [
    ({"compress_ratio": 0}, "compress_ratio"), ({"compress_ratio": 1.5}, "compress_ratio"),
    ({"compress_ratio": -0.1}, "compress_ratio"), ({"sample_ratio": -0.01}, "sample_ratio"),
    ({"sample_ratio": 0}, "sample_ratio"), ({"compress_upper_bound": 0.5}, "compress_upper_bound"),
    ({"compress_lower_bound": 1.2}, "compress_lower_bound"), ({"max_adaptation_iters": -1}, "max_adaptation_iters"),
    ({"warmup_coeff": 2.0}, "warmup_coeff")])
def test_bad_arguments_name_the_parameter(kwargs, name):
    with pytest.raises(ValueError, match=name):
        DGCCompressor(**kwargs)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_gradient_is_rejected_and_never_enters_the_residual(bad):
    memory = ResidualMemory()
    c = DGCCompressor(memory=memory, min_compress_numel=1)
    c.initialize(_named(4096, "layer.weight"), 1)
    good = torch.randn(4096)
    c.compress(good.clone(), "layer.weight")
    before = memory.buffers["residuals"]["layer.weight"].clone()
    g = torch.randn(4096)
    g[17] = bad
    with pytest.raises(FloatingPointError, match="layer.weight"):
        c.compress(g, "layer.weight")
    assert torch.equal(memory.buffers["residuals"]["layer.weight"], before)


def test_unsupported_dtype_names_the_parameter():
    c = DGCCompressor(min_compress_numel=1)
    c.initialize(_named(4096, "emb.weight"), 1)
    with pytest.raises(TypeError, match="emb.weight"):
        c.compress(torch.ones(4096, dtype=torch.int32), "emb.weight")


def test_no_memory_drops_unsent_values():
    c = _compressor(10_000, memory=Memory())
    x = torch.randn(10_000)
    payload, ctx = c.compress(x, "w")
    assert _dense(c, payload, ctx, 10_000).count_nonzero().item() == 10


def test_plain_compressor_is_dense_allreduce():
    c = Compressor()
    g = torch.randn(10)
    payload, ctx = c.compress(g, "x")
    assert payload.collective == "allreduce" and payload.tensor is g
    out = torch.empty(10)
    c.decompress(torch.ones(10), ctx, out=out)
    assert torch.equal(out, torch.ones(10))


def test_num_selects_is_at_least_one_and_at_most_numel():
    c = DGCCompressor(compress_ratio=0.001)
    assert c.num_selects(1) == 1 and c.num_selects(500) == 1 and c.num_selects(10**7) == 10_000
    assert DGCCompressor(compress_ratio=1.0).num_selects(37) == 37
    assert math.isclose(c.compress_ratio, 0.001)
