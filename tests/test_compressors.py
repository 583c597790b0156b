"""Every compressor selected by a file in configs/compression/, on the one pipeline, with three in-process
workers: replicas stay identical, the loss goes down, the wire bytes match the encoding's formula, error
feedback conserves; unbiased quantizers are unbiased; bad arguments are named. (tests/mp/compressor_checks.py
runs the same files under horovodrun -np 2.)"""
import math
import pathlib

import pytest
import torch

import dgc.horovod as dgc_hvd
from dgc.compressors.base import Compressor, Sparse
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
from dgc.costmodel import sparse_is_larger
from dgc.exchange import Exchange
from dgc.inprocess import InProcessGroup
from dgc.memory import DGCSGDMemory, ResidualMemory
from conftest import COMPRESSION_CONFIGS
from training.config import load_configs

ROOT = pathlib.Path(__file__).resolve().parent.parent
CONFIGS = [p.name for p in COMPRESSION_CONFIGS]
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
    round), by its formula; a sparsifier's pairs go as fp32 values of the whole tensor where their allgather
    would move more bytes (the sparse/dense switch)."""
    name, numel = type(compressor).__name__, math.prod(shape)
    if name == "Compressor":
        return numel * 4
    if name in ("TopKCompressor", "DGCCompressor"):
        pairs = pair_bytes(compressor.pairs, max(1, round(numel * compressor.compress_ratio)), numel)
        return numel * 4 if sparse_is_larger(compressor.world_size, pairs, numel) else pairs
    if name == "ThresholdCompressor":
        counts = compressor.counts[tensor]
        pairs = pair_bytes(compressor.pairs, max(counts), numel)
        return 4 + (numel * 4 if sparse_is_larger(len(counts), pairs, numel) else pairs)
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


def batch(rank, step, device="cpu"):
    gen = torch.Generator().manual_seed(1000 * rank + step)
    x = torch.randn(32, COLS, generator=gen)
    return x.to(device), ((x[:, :4].sum(1) > 0).long() + 2 * (x[:, 4:8].sum(1) > 0).long()).to(device)


MAJORITY = {"signum.py", "signsgd_majority.py"}
"""Configs whose result is the sign of the workers' sum (a majority vote), not their average."""


def dense(what, numel=ROWS * COLS):
    """A memory's ``sent`` (dense or :class:`Sparse`) as a flat dense tensor."""
    if isinstance(what, Sparse):
        return torch.zeros(numel, device=what.values.device).index_add_(0, what.indices, what.values)
    return what.reshape(-1).clone()


@pytest.mark.parametrize("config", CONFIGS)
def test_compressor_on_three_inprocess_workers(config, device):
    """30 steps of every config on three workers: identical replicas, a lower loss, the wire bytes of the
    encoding's formula, and conservation at every step: with ResidualMemory sent + residual == all gradients;
    with DGCSGDMemory sent + velocity == all momentum-corrected gradients (u = m u + clip(g), u zeroed where
    sent when masking; an independent reference); without memory the average is the mean of what the workers
    say they sent (the majority's sign of their sum for Signum)."""
    cfg = load_configs(["configs/digits/digitsnet.py", f"configs/compression/{config}"], root=ROOT / "configs")
    nets = [model().to(device) for _ in range(3)]
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
        memory = opt.exchange.memory
        accumulated, sent, u = (torch.zeros(ROWS * COLS, device=device) for _ in range(3))
        step_sent, averages, sent_per_step = [], [], []
        update = memory.update

        def spy(name, what):
            if name == "0.weight":
                step_sent.append(dense(what))
            update(name, what)

        memory.update = spy
        expected_bytes = 0
        x0, y0 = batch(99, 0, device)
        first = torch.nn.functional.cross_entropy(net(x0), y0).item()
        torch.manual_seed(comm.rank)
        for step in range(steps):
            opt.zero_grad()
            x, y = batch(comm.rank, step, device)
            torch.nn.functional.cross_entropy(net(x), y).backward()
            g = net[0].weight.grad.view(-1).clone()
            opt.step()
            mine = sum(step_sent, torch.zeros(ROWS * COLS, device=device))
            step_sent.clear()
            sent += mine
            expected_bytes += wire_bytes(opt.exchange.compressor)
            state = memory.state_dict()
            if isinstance(memory, DGCSGDMemory):
                max_norm = memory.gradient_clipping * comm.size ** 0.5
                u = memory.momentum * u + g * min(1.0, max_norm / (torch.linalg.vector_norm(g).item() + 1e-6))
                accumulated += u
                if memory.momentum_masking:
                    u[mine != 0] = 0
                torch.testing.assert_close(sent + state["velocities"]["0.weight"], accumulated, rtol=0, atol=1e-4)
            elif isinstance(memory, ResidualMemory):
                accumulated += g
                torch.testing.assert_close(sent + state["residuals"]["0.weight"], accumulated, rtol=0, atol=1e-4)
            else:
                assert not state, "a config without memory keeps no residual"
                sent_per_step.append(mine)
                averages.append(net[0].weight.grad.view(-1).clone())
        last = torch.nn.functional.cross_entropy(net(x0), y0).item()
        return first, last, expected_bytes, sent_per_step, averages

    results = group.run(worker)
    for a, b, c in zip(*(n.parameters() for n in nets)):
        assert torch.equal(a, b) and torch.equal(a, c), "replicas differ"
    for first, last, *_ in results:
        assert last < 0.9 * first, (config, first, last)
    if cfg.train.memory is None and config != "none.py":
        wire = getattr(cfg.train.compression(), "wire_dtype", None)      # a 16-bit average rounds in 16 bits
        for step, average in enumerate(results[0][4]):
            total = sum(r[3][step] for r in results)
            if config in MAJORITY:
                assert torch.equal(average, total.sign()), (config, step)
                continue
            largest = max(r[3][step].abs().max() for r in results).item()
            atol = 2 * torch.finfo(wire).eps * largest if wire is not None else 1e-6
            torch.testing.assert_close(average, total / 3, rtol=0 if wire else 1e-5, atol=atol,
                                       msg=f"{config} step {step}")
    logged = [nbytes for rank, name, _, nbytes in group.log if rank == 0 and name == "0.weight"]
    assert sum(logged) == results[0][2], (config, logged[:2])
    assert len(logged) >= steps


def test_every_compressor_over_horovod_two_workers():
    from conftest import horovodrun
    result = horovodrun(2, ["tests/mp/compressor_checks.py"], timeout=300)
    assert result.stdout.count(f"{len(CONFIGS)} compressors ok") == 2


class _Biased(Compressor):
    """``inner`` with a bias added to its average: ``factor`` times it, plus ``offset`` with alternating
    signs over the elements (a bias whose sum and projection on the mean vanish). Only compress/decompress
    of ``inner`` are used."""

    def __init__(self, inner, factor=1.0, offset=0.0):
        self.inner, self.factor, self.offset = inner, factor, offset
        self.min_compress_numel = inner.min_compress_numel

    def compress(self, tensor, name):
        return self.inner.compress(tensor, name)

    def decompress(self, result, ctx, out=None):
        average = self.inner.decompress(result, ctx).reshape(-1) * self.factor
        return average + self.offset * (1 - 2 * (torch.arange(average.numel()) % 2))


def exchanged_averages(make, grads, steps=8, tensors=50):
    """Rank 0's averages of ``steps`` x ``tensors`` exchanges of the fixed per-worker gradients ``grads``
    (no memory) through ``make()`` on len(grads) in-process workers (on the gradients' device), one row per
    exchange."""
    def worker(comm):
        params = [(f"w{i}", torch.nn.Parameter(torch.zeros_like(grads[0]))) for i in range(tensors)]
        ex = Exchange(params, comm, make())
        assert all(route.compressed for route in ex.routes.values())
        rows = []
        for _ in range(steps):
            outs = [grads[comm.rank].clone() for _ in params]
            ex.finish([ex.start(name, out) for (name, _), out in zip(params, outs)])
            rows.extend(out.reshape(-1) for out in outs)
        return torch.stack(rows)

    return InProcessGroup(len(grads)).run(worker)[0]


def bias_z(draws, expected):
    """Three aggregate z-scores of the draws' mean against ``expected`` (each about N(0, 1) if unbiased):
    the error summed over all elements, summed after projecting on sign(expected) (a shrinking or
    inflating compressor), and the excess of the squared error over its variance (chi-square: a bias of any
    sign pattern), all pooled over the elements with the per-element variance of the mean estimated from
    the draws."""
    draws, expected = draws.double(), expected.double()
    error = draws.mean(0) - expected
    variance = draws.var(0) / draws.shape[0]
    spread = variance.sum().sqrt()
    effective = variance.sum() ** 2 / variance.square().sum()
    chi = error.square().sum() / variance.sum()
    return [float(error.sum() / spread), float((error * expected.sign()).sum() / spread),
            float((chi - 1) / (2 / effective).sqrt())]


UNIFORM_GRADS = [torch.rand(ROWS, COLS, generator=torch.Generator().manual_seed(r)) * 2 - 1 for r in range(2)]
"""Two workers' gradients, uniform in [-1, 1]: within 2.5 standard deviations, so a clipping TernGrad
(Wen et al.'s variant) would be unbiased on them too."""


@pytest.mark.parametrize("make", [lambda: QSGDCompressor(levels=1), lambda: QSGDCompressor(levels=4),
                                  lambda: QSGDCompressor(levels=4, bucket_size=100), TernGradCompressor,
                                  NaturalCompressor],
                         ids=["qsgd-s1", "qsgd-s4", "qsgd-s4-bucket100", "terngrad", "natural"])
def test_unbiased_compressors_are_unbiased_through_the_exchange(make, device):
    """400 exchanges of fixed gradients on two workers: the mean of the averages is the true average, by
    three pooled z-scores over all 2048 elements (buckets of 100 leave a partial last one; each within 5: a false alarm about once in 10^6 runs; the
    threads draw from torch's one generator in no fixed order, so the draws vary from run to run)."""
    torch.manual_seed(0)
    draws = exchanged_averages(make, [g.to(device) for g in UNIFORM_GRADS]).cpu()
    assert (draws.std(0) > 0).float().mean() > 0.9, "stochastic rounding must vary"
    z = bias_z(draws, sum(UNIFORM_GRADS).view(-1) / 2)
    assert max(abs(v) for v in z) < 5, z


@pytest.mark.parametrize("bias,which", [({"factor": 0.95}, 1), ({"offset": 0.05}, 2)], ids=["shrunk-5%", "alternating"])
def test_the_unbiasedness_statistic_detects_a_small_bias(bias, which):
    """The same statistics reject QSGD (4 levels) whose average is shrunk by 5%, or offset by +-0.05 with
    alternating signs (a 24th of one average's standard deviation, about 1.2 here)."""
    torch.manual_seed(0)
    draws = exchanged_averages(lambda: _Biased(QSGDCompressor(levels=4), **bias), UNIFORM_GRADS)
    z = bias_z(draws, sum(UNIFORM_GRADS).view(-1) / 2)
    assert abs(z[which]) > 8, z


def test_qsgd_variance_bound_holds_per_bucket(device):
    """Alistarh et al. Lemma 3.1 per bucket of d = 512 at s = 4 levels: E||Q(v) - v||^2 <= min(d / s^2,
    sqrt(d) / s) ||v||^2 = 5.66 ||v||^2 for every bucket (squared error averaged over 4 draws) of 2^18
    normal values. One norm for the whole tensor (bucket_size=None) gives about 100x the squared norm there
    (0.8 sqrt(n) / s; 28x the norm at 2^24 elements), far above the same bound in most buckets."""
    torch.manual_seed(0)
    x, d = torch.randn(2 ** 18, device=device), 512
    bound = min(d / 16, math.sqrt(d) / 4)
    ratios = {}
    for bucket in (512, None):
        compressor = QSGDCompressor(levels=4, bucket_size=bucket)
        error = sum((compressor.decode(compressor.encode(x), x.shape) - x).pow(2) for _ in range(4)) / 4
        ratios[bucket] = error.view(-1, d).sum(1) / x.view(-1, d).pow(2).sum(1)
        assert len(compressor.encode(x)) == 4 * -(-x.numel() // (bucket or x.numel())) + x.numel() // 2
    assert ratios[512].max() <= bound, ratios[512].max()
    assert ratios[None].median() > 10 * bound, ratios[None].median()


def test_signsgd_majority_vote_is_the_sign_of_the_sum_of_signs(device):
    """Bernstein et al. Algorithm 3: three workers vote per element (2 of 3 decide); two tie to 0. The
    default is the mean of the signs."""
    votes = torch.tensor([[1.0, -2.0, 3.0, -0.5, 0.1, 2.0, -1.0, 4.0] * 128,
                          [2.0, -1.0, -1.0, 0.5, -0.1, -3.0, -1.0, 1.0] * 128,
                          [-1.0, 3.0, -2.0, -1.0, -0.2, 1.0, -2.0, 0.5] * 128], device=device).view(3, 32, 32)
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
    """One exchange of ``grads[comm.rank]`` through a ThresholdCompressor(0.5) with int32 indices (on the
    gradients' device); returns the average and the per-worker counts."""
    param = torch.nn.Parameter(torch.zeros_like(grads[comm.rank]))
    exchange = Exchange([("w", param)], comm, ThresholdCompressor(threshold=0.5, int32_indices=True))
    grad = grads[comm.rank].clone()
    exchange.finish([exchange.start("w", grad)])
    return grad, exchange.compressor.counts["w"]


@pytest.mark.parametrize("selected", [(0, 7, 300), (0, 0, 0), (1, 0, 0)], ids=["some", "none", "one"])
def test_threshold_varies_counts_per_worker_without_a_hang(selected, device):
    """Each worker selects a different number of values (zero included); the result is the exact average of
    the thresholded gradients, and the pairs' round is skipped (one collective only) when no one selected."""
    grads = []
    for rank, count in enumerate(selected):
        g = torch.rand(ROWS * COLS, generator=torch.Generator().manual_seed(rank)) * 0.4
        g[torch.randperm(g.numel(), generator=torch.Generator().manual_seed(10 + rank))[:count]] = -1.5
        grads.append(g.view(ROWS, COLS).to(device))
    group = InProcessGroup(3, timeout=10)
    results = group.run(lambda comm: threshold_exchange(comm, grads))
    expected = sum(torch.where(g.abs() >= 0.5, g, 0.0) for g in grads) / 3
    for average, counts in results:
        assert counts == list(selected)
        assert torch.equal(average, expected)
    sizes = [nbytes for rank, _, _, nbytes in group.log if rank == 0]
    assert sizes == ([4] if max(selected) == 0 else [4, max(selected) * 8])


@pytest.mark.parametrize("memory", [None, ResidualMemory, DGCSGDMemory], ids=["none", "residual", "momentum-correction"])
def test_every_compressor_pairs_with_every_memory(memory, device):
    """Any compressor with any memory, two in-process workers, 8 steps: replicas stay identical and finite."""
    for config in CONFIGS:
        cfg = load_configs(["configs/digits/digitsnet.py", f"configs/compression/{config}"], root=ROOT / "configs")
        nets = [model().to(device) for _ in range(2)]

        def worker(comm):
            net = nets[comm.rank]
            opt = dgc_hvd.DistributedOptimizer(torch.optim.SGD(net.parameters(), lr=0.002, momentum=0.9),
                                               named_parameters=net.named_parameters(), communicator=comm,
                                               compression=cfg.train.compression(),
                                               memory=memory() if memory else None)
            torch.manual_seed(comm.rank)
            for step in range(8):
                opt.zero_grad()
                x, y = batch(comm.rank, step, device)
                torch.nn.functional.cross_entropy(net(x), y).backward()
                opt.step()

        InProcessGroup(2).run(worker)
        for a, b in zip(*(n.parameters() for n in nets)):
            assert torch.isfinite(a).all() and torch.equal(a, b), (config, memory)


@pytest.mark.parametrize("numel", [5000, 2 ** 16, 300_000], ids=["one-block", "exactly-one-block", "five-blocks"])
@pytest.mark.parametrize("values", ["fp32", "fp16", "int8"])
def test_compact_indices_decode_exactly_what_int64_indices_do(numel, values, device):
    """16-bit offsets with per-block counts carry the same pairs as int64 indices, in 2k + 4 blocks bytes (no
    counts for one block); offsets of 2^15 and above (negative as int16) and the last element included."""
    flat = torch.randn(numel, generator=torch.Generator().manual_seed(numel))
    flat[[i for i in (0, 2 ** 15, 2 ** 16 - 1, numel - 1) if i < numel]] = 100.0
    flat = flat.to(device)
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


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_every_compressor_with_a_memory_takes_16bit_gradients(dtype, device):
    """16-bit gradients through every config's compressor with its memory (ResidualMemory where it has none),
    two workers, 3 steps: the memory stays float32, sent (float32) + residual == all gradients, the average
    lands in the 16-bit gradient alike on both ranks."""
    for config in CONFIGS:
        cfg = load_configs(["configs/digits/digitsnet.py", f"configs/compression/{config}"], root=ROOT / "configs")
        grads = [[torch.randn(ROWS, COLS, generator=torch.Generator().manual_seed(10 * r + s)).to(device, dtype)
                  for s in range(3)] for r in range(2)]

        def worker(comm):
            memory = cfg.train.memory() if cfg.train.memory is not None else ResidualMemory()
            clip = lambda g: g       # noqa: E731
            if isinstance(memory, DGCSGDMemory):     # momentum 0: the velocity accumulates clipped gradients
                memory.follow(0.0, False)
                memory.initialize(comm.size)
                max_norm = memory.gradient_clipping * comm.size ** 0.5
                clip = lambda g: g * min(1.0, max_norm / (torch.linalg.vector_norm(g).item() + 1e-6))  # noqa: E731
            compressor = cfg.train.compression()
            compressor.min_compress_numel = 1
            ex = Exchange([("w", torch.nn.Parameter(torch.zeros(ROWS, COLS, dtype=dtype, device=device)))], comm,
                          compressor, memory)
            sent = torch.zeros(ROWS * COLS, dtype=torch.float64, device=device)
            update = memory.update
            memory.update = lambda name, what: (sent.add_(dense(what).double()), update(name, what))
            averages = []
            for g in grads[comm.rank]:
                out = g.clone()
                ex.finish([ex.start("w", out)])
                assert out.dtype == dtype and torch.isfinite(out).all()
                averages.append(out)
            state = memory.state_dict()
            kept = state.get("residuals", state.get("velocities"))["w"]
            assert all(buffers["w"].dtype == torch.float32 for buffers in state.values()), config
            accumulated = sum(clip(g.double()) for g in grads[comm.rank]).view(-1)
            torch.testing.assert_close(sent + kept.double(), accumulated, rtol=0, atol=1e-4, msg=config)
            return averages

        first, second = InProcessGroup(2).run(worker)
        assert all(torch.equal(a, b) for a, b in zip(first, second)), config


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_signum_momentum_is_float32_for_16bit_gradients(dtype, device):
    """Signum's momentum is its memory: with 16-bit gradients it is kept in float32, so small gradients still
    move it as the float64 recurrence does (a 16-bit momentum stalls where 0.9 m + 0.1 g rounds back to m)."""
    compressor = SignumCompressor(beta=0.9, min_compress_numel=1)
    ex = Exchange([("w", torch.nn.Parameter(torch.zeros(4, 8, dtype=dtype, device=device)))],
                  InProcessGroup(1).communicator(0), compressor)
    expected = 0.0
    for step in range(60):
        value = 1.0 if step == 0 else 1e-3
        expected = 0.9 * expected + 0.1 * torch.tensor(value, dtype=dtype).item()
        ex.finish([ex.start("w", torch.full((4, 8), value, dtype=dtype, device=device))])
    momentum = compressor.state_dict()["momentum"]["w"]
    assert momentum.dtype == torch.float32
    assert momentum.view(-1)[0].item() == pytest.approx(expected, rel=1e-4)
