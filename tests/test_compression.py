"""Single-process tests of the compressors alone: selection, encoding, decompression arithmetic, warm-up,
bad arguments (the pipeline around them is tested in test_exchange.py)."""
import math

import pytest
import torch

from conftest import DEVICES
from dgc.compression import Compressor, DGCCompressor
from dgc.compressors.topk import TopKCompressor


def _dense(c, payload, ctx):
    return c.decompress(payload.tensor, ctx)


def _assert_exact_topk(x, idx, k):
    assert idx.numel() == k
    assert torch.unique(idx).numel() == k, "indices must be distinct"
    selected = torch.zeros(x.numel(), dtype=torch.bool, device=x.device)
    selected[idx] = True
    if k < x.numel():
        assert x[selected].abs().min() >= x[~selected].abs().max()


def _heavy_tailed(n, gen):
    return torch.distributions.Cauchy(0.0, 1.0).sample((n,)) * torch.rand(n, generator=gen)


@pytest.mark.parametrize("numel", [1, 2, 7, 1000, 2047, 5000, 100_003, 1_000_000, 10_000_000])
@pytest.mark.parametrize("kind", ["normal", "heavy", "constant"])
@pytest.mark.parametrize("strided", [True, False])
def test_selection_sends_exactly_k_largest(numel, kind, strided, device):
    gen = torch.Generator().manual_seed(numel)
    if kind == "normal":
        x = torch.randn(numel, generator=gen)
    elif kind == "heavy":
        torch.manual_seed(numel)
        x = _heavy_tailed(numel, gen)
    else:
        x = torch.full((numel,), -0.5)
    x = x.to(device)
    c = DGCCompressor(strided_sample=strided)
    k = c.num_selects(numel)
    assert k == max(1, round(numel * 0.001))
    lower, upper = c.compress_lower_bound * k, c.compress_upper_bound * k
    idx = c.select(x, k)
    assert lower <= idx.numel() <= upper
    _assert_exact_topk(x, idx, k)


def _fixed_threshold(value):
    def threshold(self, x, k, num_samples):
        return torch.tensor(value, device=x.device)
    return threshold


@pytest.mark.parametrize("iters", [0, 3, 30])
def test_threshold_adaptation_and_exact_fallback(monkeypatch, iters, device):
    """A sample that overestimates the threshold forces rescans, then the exact fallback; still exact."""
    x = torch.randn(200_000, generator=torch.Generator().manual_seed(1)).to(device)
    monkeypatch.setattr(DGCCompressor, "_threshold", _fixed_threshold(100.0))
    c = DGCCompressor(max_adaptation_iters=iters)
    _assert_exact_topk(x, c.select(x, 200), 200)


def test_resample_false_keeps_k_candidates_above_threshold(monkeypatch, device):
    x = torch.randn(200_000, generator=torch.Generator().manual_seed(2)).to(device)
    monkeypatch.setattr(DGCCompressor, "_threshold", _fixed_threshold(2.0))
    c = DGCCompressor(resample=False)
    idx = c.select(x, 200)
    assert idx.numel() == 200 and torch.unique(idx).numel() == 200
    assert (x[idx].abs() >= 2.0).all()


@pytest.mark.parametrize("fp16,int32,value_bytes,index_bytes",
                         [(False, False, 4, 8), (True, False, 2, 8), (False, True, 4, 4), (True, True, 2, 4)])
def test_encodings_round_trip(fp16, int32, value_bytes, index_bytes, device):
    numel = 50_000
    x = torch.randn(numel, generator=torch.Generator().manual_seed(3)).to(device)
    c = DGCCompressor(fp16_values=fp16, int32_indices=int32, compress_ratio=0.01)
    payload, ctx = c.compress(x.clone(), "w")
    k = c.num_selects(numel)
    assert payload.collective == "allgather" and payload.num_values == k
    assert payload.tensor.dtype == torch.uint8 and payload.tensor.numel() == k * (value_bytes + index_bytes)
    dense = _dense(c, payload, ctx)
    assert dense.dtype == torch.float32
    idx = dense.nonzero().view(-1)
    _assert_exact_topk(x, idx, k)
    expected = x[idx].half().float() if fp16 else x[idx]
    assert torch.equal(dense[idx], expected)
    assert torch.equal(payload.sent.indices.sort().values, idx) and torch.equal(dense[payload.sent.indices], payload.sent.values)


def test_fp16_values_are_clamped_and_sent_says_what_receivers_decode(device):
    """A value beyond fp16's range goes on the wire as +-65504, not inf; ``sent`` carries the decoded values
    (so the memory keeps ``v - fp16(v)``, see test_memory.py)."""
    x = torch.zeros(4096, device=device)
    x[7], x[9], x[11] = 1e6, -2e5, 0.1
    c = DGCCompressor(compress_ratio=3 / 4096, fp16_values=True)
    payload, ctx = c.compress(x, "w")
    dense = _dense(c, payload, ctx)
    assert torch.isfinite(dense).all()
    assert dense[7].item() == 65504.0 and dense[9].item() == -65504.0
    assert dense[11].item() == torch.tensor(0.1).half().float().item() != 0.1
    order = payload.sent.indices.argsort()
    assert torch.equal(payload.sent.values[order], dense[payload.sent.indices[order]])


def test_fp16_values_accumulate_in_fp32(device):
    """Six workers each sending 60000 at one index: fp16 would overflow (65504) if summed before casting."""
    numel = 4096
    c = DGCCompressor(fp16_values=True, compress_ratio=1 / numel)
    x = torch.zeros(numel, device=device)
    x[5] = 60000.0
    payload, ctx = c.compress(x, "w")
    dense = c.decompress(payload.tensor.repeat(6), ctx)
    assert dense[5].item() == 60000.0 and dense.abs().sum().item() == 60000.0


def test_half_precision_gradients_accumulate_in_fp32(device):
    """fp16 gradients: six workers each sending 60000 at one index average to 60000, not inf (the sum,
    360000, is past fp16's range, so it must not be formed in fp16)."""
    x = torch.zeros(4096, dtype=torch.float16, device=device)
    x[5] = 60000.0
    c = DGCCompressor(compress_ratio=1 / 4096)
    payload, ctx = c.compress(x, "w")
    dense = c.decompress(payload.tensor.repeat(6), ctx)
    assert dense[5].item() == 60000.0 and torch.isfinite(dense).all()


def test_exchange_average_of_overlapping_and_disjoint_workers(device):
    """Decompressing the allgathered payloads equals the mean of every worker's sparse tensor."""
    numel, workers = 10_000, 3
    c = DGCCompressor(compress_ratio=0.002)
    base = torch.zeros(numel, device=device)
    payloads, sparse = [], []
    for w in range(workers):
        x = torch.randn(numel, generator=torch.Generator().manual_seed(w)).to(device) * 0.01
        x[:10] = 5.0 + w             # every worker sends indices 0..9 (overlap)
        x[100 + 10 * w:110 + 10 * w] = -7.0   # and ten indices only it sends (disjoint)
        payload, ctx = c.compress(x, "w")
        payloads.append(payload.tensor)
        expected = base.clone()
        expected[:10] = x[:10]
        expected[100 + 10 * w:110 + 10 * w] = -7.0
        sparse.append(expected)
    dense = c.decompress(torch.cat(payloads), ctx)
    torch.testing.assert_close(dense, torch.stack(sparse).mean(0), rtol=0, atol=1e-6)


def test_decompression_is_the_rank_order_sum_bit_for_bit(device):
    """Every rank decodes the same gathered bytes to the same bits: the average is the sum of the workers'
    sparse tensors added in rank order, then divided (one index_add_ per worker, distinct indices in each,
    so no repeated-index atomics on CUDA). Values chosen so that the order of the additions matters."""
    numel, workers, k = 1000, 5, 40
    gen = torch.Generator().manual_seed(9)
    c = DGCCompressor(compress_ratio=k / numel)
    payloads, dense_parts = [], []
    for w in range(workers):
        x = torch.zeros(numel)
        idx = torch.randperm(60, generator=gen)[:k]          # heavy overlap between workers
        x[idx] = (torch.rand(k, generator=gen) + 0.5) * 10.0 ** (3 * w - 6)
        x = x.to(device)
        payload, ctx = c.compress(x, "w")
        payloads.append(payload.tensor)
        dense_parts.append(x)
    got = c.decompress(torch.cat(payloads), ctx)
    expected = torch.zeros(numel, device=device)
    for part in dense_parts:
        expected += part
    assert torch.equal(got, expected / workers)
    assert torch.equal(c.decompress(torch.cat(payloads), ctx), got)


def _overlapping_rows(c, numel, k, workers):
    """The gathered bytes of ``workers`` DGC payloads (compressed on the CPU) whose k indices overlap heavily
    (all drawn from the first 3k positions) and whose values span 12 orders of magnitude across workers (so
    the order of the additions shows in the bits)."""
    gen = torch.Generator().manual_seed(11)
    rows = []
    for w in range(workers):
        x = torch.zeros(numel)
        x[torch.randperm(3 * k, generator=gen)[:k]] = (torch.rand(k, generator=gen) + 0.5) * 10.0 ** (3 * (w % 5) - 6)
        payload, ctx = c.compress(x, "w")
        rows.append(payload.tensor)
    return torch.cat(rows), ctx


@pytest.mark.skipif("cuda" not in DEVICES, reason="no CUDA device")
@pytest.mark.parametrize("workers", [5, 8])
@pytest.mark.parametrize("encoding", [{}, {"fp16_values": True, "compact_indices": True}],
                         ids=["fp32-int64", "fp16-compact"])
def test_cuda_decompression_is_deterministic_and_equals_the_cpus(workers, encoding):
    """The README's index_add_ argument on the hardware: 2^12 pairs per worker over 2^18 elements (4 blocks of
    compact indices), indices overlapping across workers, decompressed on CUDA twice gives the same bits, and
    the rank-order sum (Pairs.add) is the CPU's bit for bit; so is the average for 8 workers (a division by a
    power of two is exact however the device divides: CUDA may multiply by the reciprocal of 5)."""
    numel, k = 2 ** 18, 2 ** 12
    c = DGCCompressor(compress_ratio=k / numel, **encoding)
    gathered, ctx = _overlapping_rows(c, numel, k, workers)
    on_gpu = gathered.cuda()
    first = c.decompress(on_gpu, ctx)
    second = c.decompress(on_gpu.clone(), ctx)
    assert torch.equal(first, second), "CUDA decompression differs between two runs"
    sums = []
    for rows in (gathered, on_gpu):
        total = torch.zeros(numel, device=rows.device)
        c.pairs.add(total, rows.view(workers, -1), [k] * workers, torch.float32)
        sums.append(total.cpu())
    assert torch.equal(sums[0], sums[1]), "the CUDA rank-order sum differs from the CPU's"
    if workers == 8:
        assert torch.equal(first.cpu(), c.decompress(gathered, ctx))


def test_warmup_schedules_of_the_paper_and_the_reference_code():
    """configs/dgc/paper_warmup.py: 25%, 6.25%, 1.5625%, 0.39%, then 0.1% (§3.3); configs/dgc/wm5.py: the
    reference code's 0.001 ** ((epoch + 1) / 6): 31.6%, 10%, 3.2%, 1%, 0.32%, then 0.1%."""
    from training.config import load_configs
    for files, expected in ((["configs/dgc/paper_warmup.py"], [0.25, 0.0625, 0.015625, 0.00390625, 0.001, 0.001]),
                            (["configs/dgc/wm5.py"], [0.001 ** (e / 6) for e in range(1, 6)] + [0.001, 0.001])):
        cfg = load_configs(["configs/digits/digitsnet.py", *files], root="configs")
        c = cfg.train.compression()
        ratios = [c.warmup_compress_ratio(e) for e in range(len(expected))]
        assert ratios == pytest.approx(expected, rel=1e-12), files
    c = DGCCompressor(compress_ratio=0.001, warmup_epochs=4)
    assert c.warmup_compress_ratio(0.5) == pytest.approx(0.001 ** (1.5 / 5))
    listed = DGCCompressor(compress_ratio=0.001, warmup_epochs=2, warmup_coeff=[0.3, 0.01])
    assert [listed.warmup_compress_ratio(e) for e in range(3)] == [0.3, 0.01, 0.001]
    assert DGCCompressor(warmup_epochs=-1).warmup_compress_ratio(0) == 0.001


def test_warmup_changes_k():
    c = DGCCompressor(warmup_epochs=4)
    c.set_epoch(0)
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


def test_topk_compressor_sends_the_exact_top_k(device):
    x = torch.randn(30_000, generator=torch.Generator().manual_seed(4)).to(device)
    c = TopKCompressor(compress_ratio=0.01, int32_indices=True)
    payload, ctx = c.compress(x, "w")
    assert payload.tensor.numel() == 300 * (4 + 4)
    _assert_exact_topk(x, _dense(c, payload, ctx).nonzero().view(-1), 300)


def test_plain_compressor_is_dense_allreduce():
    c = Compressor()
    g = torch.randn(10)
    payload, ctx = c.compress(g, "x")
    assert payload.collective == "allreduce" and payload.tensor is g and payload.sent is g
    result = torch.ones(10)
    assert c.decompress(result, ctx) is result


def test_num_selects_is_at_least_one_and_at_most_numel():
    c = DGCCompressor(compress_ratio=0.001)
    assert c.num_selects(1) == 1 and c.num_selects(500) == 1 and c.num_selects(10**7) == 10_000
    assert DGCCompressor(compress_ratio=1.0).num_selects(37) == 37
    assert math.isclose(c.compress_ratio, 0.001)


def test_compact_config_sends_resnet20_in_under_4_kb_per_step():
    """configs/dgc/compact.py after warm-up: fp16 values, 16-bit block-offset indices, fp16 dense tensors, and
    every weight of 256+ elements sparsified: ResNet-20 (0.27M parameters) exchanges at most 4 KB per worker
    and step (configs/dgc/fp16.py + int32.py: 11.4 KB)."""
    import train
    from dgc.inprocess import InProcessGroup
    from training.config import load_configs

    sent = {}
    for name, extra in (("int32", ["configs/dgc/fp16.py", "configs/dgc/int32.py"]), ("compact", ["configs/dgc/compact.py"])):
        cfg = load_configs(["configs/cifar/resnet20.py", "configs/dgc/__init__.py", *extra], root="configs")
        model = cfg.model()
        optimizer, exchange = train.build_optimizer(cfg, model, 1, InProcessGroup(1).communicator(0))
        exchange.set_epoch(100)
        torch.manual_seed(0)
        out = model(torch.randn(8, 3, 32, 32))
        torch.nn.functional.cross_entropy(out, torch.randint(10, (8,))).backward()
        optimizer.step()
        sent[name] = exchange.last_exchange["bytes_sent"]
    assert sent["compact"] <= 4096 < 11_000 < sent["int32"], sent
