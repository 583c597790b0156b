"""Every compressor selected by a file in configs/compression/, on the one pipeline, with three in-process
workers: replicas stay identical, the loss goes down, the wire bytes match the encoding's formula, error
feedback conserves; unbiased quantizers are unbiased; bad arguments are named. (tests/mp/compressor_checks.py
runs the same files under horovodrun -np 2.)"""
import math
import pathlib

import pytest
import torch

import dgc.horovod as dgc_hvd
from dgc.compressors.base import Sparse
from dgc.compressors.packing import packed_bytes
from dgc.compressors.natural import NaturalCompressor
from dgc.compressors.powersgd import PowerSGDCompressor
from dgc.compressors.qsgd import QSGDCompressor
from dgc.compressors.randomk import RandomKCompressor
from dgc.compressors.signsgd import SignSGDCompressor
from dgc.compressors.signum import SignumCompressor
from dgc.compressors.terngrad import TernGradCompressor
from dgc.compressors.threshold import ThresholdCompressor
from dgc.compressors.topk import TopKCompressor
from dgc.exchange import Exchange
from dgc.inprocess import InProcessGroup
from dgc.memory import DGCSGDMemory, ResidualMemory
from training.config import load_configs

ROOT = pathlib.Path(__file__).resolve().parent.parent
CONFIGS = sorted(p.name for p in (ROOT / "configs" / "compression").glob("*.py") if p.name != "__init__.py")
ROWS, COLS = 64, 32          # the compressed weight of the test model: 2048 elements


def pair_bytes(pairs, k, numel):
    """k (value, index) pairs: fp32, fp16 or int8 values (int8 with a float32 scale); int64, int32 or compact
    indices (16-bit offsets plus an int32 count per 2^16-element block when there is more than one)."""
    value_bytes = {None: 4, torch.float16: 2, torch.int8: 1}[pairs.value_dtype]
    index_bytes = {torch.int64: 8, torch.int32: 4, torch.int16: 2}[pairs.index_dtype]
    blocks = -(-numel // 2 ** 16)
    counts = 4 * blocks if pairs.index_dtype == torch.int16 and blocks > 1 else 0
    return k * (value_bytes + index_bytes) + (4 if pairs.value_dtype == torch.int8 else 0) + counts


def wire_bytes(compressor, shape=(ROWS, COLS), tensor="0.weight"):
    """What the encoding should put on the wire for one worker and one tensor in its last exchange (every
    round), by its formula."""
    name, numel = type(compressor).__name__, math.prod(shape)
    if name == "Compressor":
        return numel * 4
    if name in ("TopKCompressor", "DGCCompressor"):
        return pair_bytes(compressor.pairs, max(1, round(numel * compressor.compress_ratio)), numel)
    if name == "ThresholdCompressor":
        return 4 + pair_bytes(compressor.pairs, max(compressor.counts[tensor]), numel)
    if name == "RandomKCompressor":
        return max(1, round(numel * compressor.compress_ratio)) * 4
    if name == "QSGDCompressor":
        return 4 * -(-numel // (compressor.bucket_size or numel)) + packed_bytes(numel, compressor.bits)
    if name == "TernGradCompressor":
        return 4 + packed_bytes(numel, 2)
    if name == "SignSGDCompressor":
        return 4 + packed_bytes(numel, 1)
    if name == "SignumCompressor":
        return packed_bytes(numel, 1)
    if name == "NaturalCompressor":
        return 4 + numel
    if name == "PowerSGDCompressor":
        return (shape[0] + numel // shape[0]) * min(compressor.rank, shape[0], numel // shape[0]) * 4
    if name in ("FP16Compressor", "BF16Compressor"):
        return numel * 2
    if name == "UniformCompressor":
        return 8 * -(-numel // compressor.chunk) + packed_bytes(numel, compressor.bits)
    if name == "OneBitCompressor":
        return 8 * shape[0] + packed_bytes(numel, 1)
    raise AssertionError(f"no wire formula for {name}: add one")


def sgd(cfg, config, params):
    """SGD with the config's momentum (Signum's is its own: 0) and lr 0.1 times the config's
    train.lr_multiplier (sign methods move every value by lr: theirs is 0.01)."""
    return torch.optim.SGD(params, lr=0.1 * cfg.train.lr_multiplier, momentum=cfg.train.optimizer.momentum)


def model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(COLS, ROWS), torch.nn.Tanh(), torch.nn.Linear(ROWS, 4))


def batch(rank, step):
    gen = torch.Generator().manual_seed(1000 * rank + step)
    x = torch.randn(32, COLS, generator=gen)
    return x, (x[:, :4].sum(1) > 0).long() + 2 * (x[:, 4:8].sum(1) > 0).long()


@pytest.mark.parametrize("config", CONFIGS)
def test_compressor_on_three_inprocess_workers(config):
    cfg = load_configs(["configs/digits/digitsnet.py", f"configs/compression/{config}"], root=ROOT / "configs")
    nets = [model() for _ in range(3)]
    group = InProcessGroup(3)
    steps = 30

    def worker(comm):
        net = nets[comm.rank]
        memory = cfg.train.memory() if cfg.train.memory is not None else None
        opt = dgc_hvd.DistributedOptimizer(sgd(cfg, config, net.parameters()),
                                           named_parameters=net.named_parameters(),
                                           compression=cfg.train.compression(), memory=memory, communicator=comm)
        assert opt.exchange.routes["0.weight"].compressed == (config != "none.py")
        assert not opt.exchange.routes["0.bias"].compressed
        accumulated, sent = torch.zeros(ROWS * COLS), torch.zeros(ROWS * COLS)
        update = opt.exchange.memory.update

        def spy(name, what):
            if name == "0.weight" and isinstance(what, Sparse):
                sent.index_add_(0, what.indices, what.values)
            elif name == "0.weight":
                sent.add_(what.reshape(-1))
            update(name, what)

        opt.exchange.memory.update = spy
        expected_bytes = 0
        x0, y0 = batch(99, 0)
        first = torch.nn.functional.cross_entropy(net(x0), y0).item()
        torch.manual_seed(comm.rank)
        for step in range(steps):
            opt.zero_grad()
            x, y = batch(comm.rank, step)
            torch.nn.functional.cross_entropy(net(x), y).backward()
            accumulated += net[0].weight.grad.view(-1)
            opt.step()
            expected_bytes += wire_bytes(opt.exchange.compressor)
        last = torch.nn.functional.cross_entropy(net(x0), y0).item()
        residual = opt.exchange.memory.state_dict().get("residuals", {}).get("0.weight")
        return first, last, residual, accumulated, sent, expected_bytes

    results = group.run(worker)
    for a, b, c in zip(*(n.parameters() for n in nets)):
        assert torch.equal(a, b) and torch.equal(a, c), "replicas differ"
    for first, last, residual, accumulated, sent, _ in results:
        assert last < 0.9 * first, (config, first, last)
        if residual is not None:
            torch.testing.assert_close(sent + residual, accumulated, rtol=0, atol=1e-4)
    logged = [nbytes for rank, name, _, nbytes in group.log if rank == 0 and name == "0.weight"]
    assert sum(logged) == results[0][5], (config, logged[:2])
    assert len(logged) >= steps


def test_every_compressor_over_horovod_two_workers():
    from conftest import horovodrun
    result = horovodrun(2, ["tests/mp/compressor_checks.py"], timeout=300)
    assert result.stdout.count(f"{len(CONFIGS)} compressors ok") == 2


@pytest.mark.parametrize("compressor", [QSGDCompressor(levels=1), QSGDCompressor(levels=4),
                                        QSGDCompressor(levels=4, bucket_size=64), TernGradCompressor(),
                                        NaturalCompressor()],
                         ids=["qsgd-s1", "qsgd-s4", "qsgd-s4-bucket64", "terngrad", "natural"])
def test_unbiased_quantizers_are_unbiased(compressor):
    """Mean of 4000 decodings of one fixed vector vs the vector: every element within 5 standard errors
    (estimated from the draws themselves); fixed seed. (500 values: buckets of 64 leave a partial last one.)"""
    torch.manual_seed(0)
    x = torch.randn(500)
    draws = torch.stack([compressor.decode(compressor.encode(x), x.shape) for _ in range(4000)])
    standard_error = draws.std(0) / math.sqrt(draws.shape[0])
    assert ((draws.mean(0) - x).abs() <= 5 * standard_error + 1e-6).all()
    assert draws.std(0).max() > 0, "stochastic rounding must vary"


def test_qsgd_variance_bound_holds_per_bucket():
    """Alistarh et al. Lemma 3.1 per bucket of d = 512 at s = 4 levels: E||Q(v) - v||^2 <= min(d / s^2,
    sqrt(d) / s) ||v||^2 = 5.66 ||v||^2 for every bucket (squared error averaged over 4 draws) of 2^18
    normal values. One norm for the whole tensor (bucket_size=None) gives about 100x the squared norm there
    (0.8 sqrt(n) / s; 28x the norm at 2^24 elements), far above the same bound in most buckets."""
    torch.manual_seed(0)
    x, d = torch.randn(2 ** 18), 512
    bound = min(d / 16, math.sqrt(d) / 4)
    ratios = {}
    for bucket in (512, None):
        compressor = QSGDCompressor(levels=4, bucket_size=bucket)
        error = sum((compressor.decode(compressor.encode(x), x.shape) - x).pow(2) for _ in range(4)) / 4
        ratios[bucket] = error.view(-1, d).sum(1) / x.view(-1, d).pow(2).sum(1)
        assert len(compressor.encode(x)) == 4 * -(-x.numel() // (bucket or x.numel())) + x.numel() // 2
    assert ratios[512].max() <= bound, ratios[512].max()
    assert ratios[None].median() > 10 * bound, ratios[None].median()


def test_signsgd_majority_vote_is_the_sign_of_the_sum_of_signs():
    """Bernstein et al. Algorithm 3: three workers vote per element (2 of 3 decide); two tie to 0. The
    default is the mean of the signs."""
    votes = torch.tensor([[1.0, -2.0, 3.0, -0.5, 0.1, 2.0, -1.0, 4.0] * 128,
                          [2.0, -1.0, -1.0, 0.5, -0.1, -3.0, -1.0, 1.0] * 128,
                          [-1.0, 3.0, -2.0, -1.0, -0.2, 1.0, -2.0, 0.5] * 128]).view(3, 32, 32)
    signs = torch.where(votes >= 0, 1.0, -1.0).view(3, -1)

    def exchange(compressor, tensors):
        payloads = [compressor.compress(t, "w") for t in tensors]
        return compressor.decompress(torch.cat([p.tensor for p, _ in payloads]), payloads[0][1])

    assert torch.equal(exchange(SignSGDCompressor(majority=True), votes), signs.sum(0).sign())
    assert torch.equal(exchange(SignSGDCompressor(), votes), signs.mean(0))
    assert torch.equal(exchange(SignSGDCompressor(majority=True), votes[:2]), signs[:2].sum(0).sign())
    assert (exchange(SignSGDCompressor(majority=True), votes[:2]) == 0).any(), "two workers must tie somewhere"


def test_terngrad_clipping_trades_bias_for_variance():
    """Wen et al.'s gradient clipping (clip_sigma=2.5): decodings average to the vector clipped to 2.5
    standard deviations (biased on the clipped outliers), with a smaller variance than the unclipped
    scale max|x| gives (unbiased for the vector itself). Pooled z over all 1000 elements of 1000 draws, of
    the errors and of the errors towards zero (a shrinking bias), against the exact variance s|t| - t^2."""
    torch.manual_seed(0)
    x, count = torch.randn(1000), 1000
    x[:5] = torch.tensor([40.0, -30.0, 25.0, -20.0, 15.0])      # outliers set the unclipped scale
    limit = 2.5 * x.std()
    clipped = torch.maximum(torch.minimum(x, limit), -limit)
    draws = {}
    for clip, target in ((None, x), (2.5, clipped)):
        compressor = TernGradCompressor(clip_sigma=clip)
        draws[clip] = torch.stack([compressor.decode(compressor.encode(x), x.shape) for _ in range(count)])
        error, scale = draws[clip].mean(0) - target, target.abs().max()
        spread = ((scale * target.abs() - target ** 2).sum() / count).sqrt()
        for pooled in (error.sum(), (error * target.sign()).sum()):
            assert pooled.abs() < 5 * spread, (clip, pooled / spread)
    assert (draws[2.5].mean(0)[:5] - x[:5]).abs().min() > 5, "the outliers' expectation is clipped"
    assert draws[2.5].var(0).sum() < draws[None].var(0).sum() / 5


@pytest.mark.parametrize("make,name", [
    (lambda: QSGDCompressor(levels=0), "levels=0"), (lambda: QSGDCompressor(levels=200), "levels=200"),
    (lambda: QSGDCompressor(bucket_size=0), "bucket_size=0"), (lambda: TernGradCompressor(clip_sigma=-1), "clip_sigma=-1"),
    (lambda: SignSGDCompressor(scaled=True, majority=True), "majority=True"),
    (lambda: PowerSGDCompressor(rank=0), "rank=0"), (lambda: RandomKCompressor(compress_ratio=1.5), "compress_ratio=1.5"),
    (lambda: TopKCompressor(compress_ratio=0), "compress_ratio=0"),
    (lambda: ThresholdCompressor(threshold=0), "threshold=0"), (lambda: SignumCompressor(beta=1.0), "beta=1.0"),
    (lambda: TopKCompressor(fp16_values=True, int8_values=True), "int8_values=True")])
def test_bad_arguments_are_named(make, name):
    with pytest.raises(ValueError, match=name):
        make()


def threshold_exchange(comm, grads):
    """One exchange of ``grads[comm.rank]`` through a ThresholdCompressor(0.5) with int32 indices; returns
    the average and the per-worker counts."""
    param = torch.nn.Parameter(torch.zeros(ROWS, COLS))
    exchange = Exchange([("w", param)], comm, ThresholdCompressor(threshold=0.5, int32_indices=True))
    grad = grads[comm.rank].clone()
    exchange.finish([exchange.start("w", grad)])
    return grad, exchange.compressor.counts["w"]


@pytest.mark.parametrize("selected", [(0, 7, 300), (0, 0, 0), (1, 0, 0)], ids=["some", "none", "one"])
def test_threshold_varies_counts_per_worker_without_a_hang(selected):
    """Each worker selects a different number of values (zero included); the result is the exact average of
    the thresholded gradients, and the pairs' round is skipped (one collective only) when no one selected."""
    grads = []
    for rank, count in enumerate(selected):
        g = torch.rand(ROWS * COLS, generator=torch.Generator().manual_seed(rank)) * 0.4
        g[torch.randperm(g.numel(), generator=torch.Generator().manual_seed(10 + rank))[:count]] = -1.5
        grads.append(g.view(ROWS, COLS))
    group = InProcessGroup(3, timeout=10)
    results = group.run(lambda comm: threshold_exchange(comm, grads))
    expected = sum(torch.where(g.abs() >= 0.5, g, 0.0) for g in grads) / 3
    for average, counts in results:
        assert counts == list(selected)
        assert torch.equal(average, expected)
    sizes = [nbytes for rank, _, _, nbytes in group.log if rank == 0]
    assert sizes == ([4] if max(selected) == 0 else [4, max(selected) * 8])


@pytest.mark.parametrize("memory", [None, ResidualMemory, DGCSGDMemory], ids=["none", "residual", "momentum-correction"])
def test_every_compressor_pairs_with_every_memory(memory):
    """Any compressor with any memory, two in-process workers, 8 steps: replicas stay identical and finite."""
    for config in CONFIGS:
        cfg = load_configs(["configs/digits/digitsnet.py", f"configs/compression/{config}"], root=ROOT / "configs")
        nets = [model() for _ in range(2)]

        def worker(comm):
            net = nets[comm.rank]
            opt = dgc_hvd.DistributedOptimizer(torch.optim.SGD(net.parameters(), lr=0.002, momentum=0.9),
                                               named_parameters=net.named_parameters(), communicator=comm,
                                               compression=cfg.train.compression(),
                                               memory=memory() if memory else None)
            torch.manual_seed(comm.rank)
            for step in range(8):
                opt.zero_grad()
                x, y = batch(comm.rank, step)
                torch.nn.functional.cross_entropy(net(x), y).backward()
                opt.step()

        InProcessGroup(2).run(worker)
        for a, b in zip(*(n.parameters() for n in nets)):
            assert torch.isfinite(a).all() and torch.equal(a, b), (config, memory)


@pytest.mark.parametrize("numel", [5000, 2 ** 16, 300_000], ids=["one-block", "exactly-one-block", "five-blocks"])
@pytest.mark.parametrize("values", ["fp32", "fp16", "int8"])
def test_compact_indices_decode_exactly_what_int64_indices_do(numel, values):
    """16-bit offsets with per-block counts carry the same pairs as int64 indices, in 2k + 4 blocks bytes (no
    counts for one block); offsets of 2^15 and above (negative as int16) and the last element included."""
    flat = torch.randn(numel, generator=torch.Generator().manual_seed(numel))
    flat[[i for i in (0, 2 ** 15, 2 ** 16 - 1, numel - 1) if i < numel]] = 100.0
    kwargs = {"fp16_values": values == "fp16", "int8_values": values == "int8"}
    results, sizes = [], []
    for compact in (False, True):
        compressor = TopKCompressor(compress_ratio=0.01, compact_indices=compact, **kwargs)
        group = InProcessGroup(2)

        def worker(comm):
            x = flat if comm.rank == 0 else flat.flip(0)
            payload, ctx = compressor.compress(x.clone(), "w")
            result = comm.wait(comm.start(payload, "w"))
            return compressor.decompress(result, ctx), payload.tensor.numel(), payload.sent

        (average, size, sent), _ = group.run(worker)
        results.append((average, sent))
        sizes.append(size)
    assert torch.equal(results[0][0], results[1][0])
    order = results[0][1].indices.argsort()
    assert torch.equal(results[0][1].indices[order], results[1][1].indices)
    assert torch.equal(results[0][1].values[order], results[1][1].values)
    k = round(numel * 0.01)
    blocks = -(-numel // 2 ** 16)
    assert sizes[0] - sizes[1] == 6 * k - (4 * blocks if blocks > 1 else 0)
