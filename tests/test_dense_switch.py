"""The lossless sparse/dense switch (dgc/compressors/sparse.py; SparCML, SC'19): a selection whose allgather of
pairs would move more bytes than a ring allreduce goes densely (zeros elsewhere) through an allreduce. Decided
from sizes alone; the same averages and residuals as the sparse path, in fewer bytes; fused with the sparse
tensors of the same step; decided per epoch of the warm-up; between the hosts' leaders, hierarchical; from the
gathered counts, threshold sparsification. Real Horovod ranks (replicas identical): tests/mp/dgc_checks.py's
check_dense_switch."""
import pytest
import torch

import dgc.horovod as dgc_hvd
from dgc.compressors.dgc import DGCCompressor
from dgc.compressors.threshold import ThresholdCompressor
from dgc.compressors.topk import TopKCompressor
from dgc.costmodel import ring_allgather_bytes, ring_allreduce_bytes
from dgc.exchange import Exchange
from dgc.fused import FusedCommunicator
from dgc.inprocess import InProcessGroup
from dgc.memory import DGCSGDMemory, ResidualMemory
from host_syncs import HostSyncCounter
from test_hierarchical import SHAPES, run_hierarchical

WORKERS = 3
FORMATS = {"fp32-int64": dict(), "fp16-int32": dict(fp16_values=True, int32_indices=True),
           "fp16-compact": dict(fp16_values=True, compact_indices=True),
           "int8-int32": dict(int8_values=True, int32_indices=True)}
"""Pair formats of 12, 6, 4 and 5 (+ a 4-byte scale) bytes; int8 values: TopKCompressor only."""


def net():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(32, 64), torch.nn.ReLU(), torch.nn.Linear(64, 48), torch.nn.ReLU(),
                               torch.nn.Linear(48, 4))


COMPRESSED = {"0.weight": 64 * 32, "2.weight": 48 * 64}
"""The weights of :func:`net` at least min_compress_numel=1000 elements; the 192-element one and the biases
go dense (fp32)."""
OTHERS = 4 * (48 * 4 + 64 + 48 + 4)
"""Their payload bytes per step."""


def make(fmt, ratio, **options):
    kind = TopKCompressor if "int8_values" in FORMATS[fmt] else DGCCompressor
    return kind(ratio, min_compress_numel=1000, **FORMATS[fmt], **options)


def train(make_compressor, steps=4, fused=False, epochs=None, device="cpu"):
    """3 in-process workers train :func:`net` through dgc.horovod.DistributedOptimizer (DGCSGDMemory); return
    rank 0's model, memory, per-step statistics and its log of payloads ((step, name, collective, bytes))."""
    group = InProcessGroup(WORKERS)
    models = [net().to(device) for _ in range(WORKERS)]
    steps_of = {}

    def worker(comm):
        model, compressor, memory = models[comm.rank], make_compressor(), DGCSGDMemory(momentum_masking=True)
        communicator = FusedCommunicator(comm) if fused else comm
        opt = dgc_hvd.DistributedOptimizer(torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9),
                                           named_parameters=model.named_parameters(), communicator=communicator,
                                           compression=compressor, memory=memory)
        stats = []
        for step in range(steps):
            if epochs is not None:
                compressor.set_epoch(epochs[step])
            if comm.rank == 0:
                steps_of[len(group.log)] = step
            gen = torch.Generator().manual_seed(100 * comm.rank + step)
            x = torch.randn(16, 32, generator=gen).to(device)
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(x), (x[:, 0] > 0).long()).backward()
            opt.step()
            stats.append(dict(opt.last_exchange))
        return memory, stats

    memory, stats = group.run(worker)[0]
    log, step = [], None
    for position, (rank, name, collective, nbytes) in enumerate(group.log):
        step = steps_of.get(position, step)
        if rank == 0:
            log.append((step, name, collective, nbytes))
    return models[0], memory, stats, log


def collective_of(log, name, step):
    return [collective for s, n, collective, _ in log if n == name and s == step]


def test_the_decision_is_the_bytes_of_allgather_against_allreduce():
    """At the paper's first warm-up ratio (25%), 6-byte pairs switch from N=6 on, 12-byte pairs from N=3 on:
    (N - 1) k b > 2 (N - 1) / N x 4 numel, i.e. N > 8 / (0.25 b); the next epoch's 6.25% never below N=11."""
    numel = 64 * 64
    for fmt, first in (("fp16-int32", 6), ("fp32-int64", 3)):
        compressor = make(fmt, 0.001, warmup_epochs=4, warmup_coeff=0.25)
        compressor.set_epoch(0)
        k = compressor.num_selects(numel)
        assert k == numel // 4
        decided = {}
        for workers in range(1, 13):
            compressor.initialize(workers)
            decided[workers] = compressor.goes_dense(k, torch.float32, numel)
        assert decided == {n: n >= first for n in range(1, 13)}, fmt
        compressor.set_epoch(1)
        k = compressor.num_selects(numel)
        compressor.initialize(10)
        assert not compressor.goes_dense(k, torch.float32, numel), fmt
    off = make("fp32-int64", 0.5, dense_switch=False)
    off.initialize(64)
    assert not off.goes_dense(off.num_selects(numel), torch.float32, numel)
    assert not make("fp32-int64", 1.0).goes_dense(numel, torch.float32, numel), "one worker (never initialized)"


def test_bad_dense_switch_is_named():
    with pytest.raises(ValueError, match=r"dense_switch='yes' must be True .* or False"):
        DGCCompressor(0.01, dense_switch="yes")


def test_dense_form_makes_no_host_sync_and_scatters_the_decoded_values():
    compressor = TopKCompressor(0.5, fp16_values=True, min_compress_numel=1)
    compressor.initialize(WORKERS)
    x = torch.randn(40, 64) * 1e-3
    with HostSyncCounter() as syncs:
        payload, ctx = compressor.compress(x, "w")
        average = compressor.decompress(payload.tensor.clone(), ctx)
    assert syncs.count == 0, syncs.ops
    assert (payload.collective, payload.tensor.dtype, payload.num_values) == ("allreduce", torch.float32, 1280)
    flat = x.view(-1)
    selected = flat.abs().topk(1280).indices
    expected = torch.zeros_like(flat)
    expected[selected] = flat[selected].half().float()      # the fp16 rounding the pairs would carry
    assert torch.equal(average, expected) and torch.equal(payload.tensor, expected)
    assert torch.equal(payload.sent.values, flat[payload.sent.indices].half().float())


@pytest.mark.parametrize("fmt", FORMATS)
def test_dense_form_gives_the_sparse_path_averages_and_residuals_in_fewer_bytes(fmt, device):
    """Ratio 0.75 at N=3: every format's allgather is larger than the allreduce. The in-process allreduce sums
    in rank order, as the sparse path's index_add_, so the weights and every residual are equal bit for bit."""
    dense, dense_memory, dense_stats, dense_log = train(lambda: make(fmt, 0.75), device=device)
    sparse, sparse_memory, sparse_stats, sparse_log = train(lambda: make(fmt, 0.75, dense_switch=False), device=device)
    for name in COMPRESSED:
        for step in range(4):
            assert collective_of(dense_log, name, step) == ["allreduce"], (name, step)
            assert collective_of(sparse_log, name, step) == ["allgather"], (name, step)
    for (name, a), b in zip(dense.named_parameters(), sparse.parameters()):
        assert torch.equal(a, b), (fmt, name, (a - b).abs().max().item())
        assert not torch.equal(a.cpu(), net().state_dict()[name]), f"{name} never moved"
    for key in ("velocities", "momentums"):
        for name in COMPRESSED:
            assert torch.equal(dense_memory.buffers[key][name], sparse_memory.buffers[key][name]), (key, name)
    if fmt != "fp32-int64":     # the rounding's error stayed in the residual on both paths
        assert dense_memory.buffers["velocities"]["0.weight"].count_nonzero() > 0.75 * COMPRESSED["0.weight"]
    for d, s in zip(dense_stats, sparse_stats):
        assert d["values_sent"] == s["values_sent"]       # k per compressed tensor on both paths
        assert d["bytes_sent"] - d["control_bytes"] == 4 * sum(COMPRESSED.values()) + OTHERS
    assert ring_bytes(dense_log) < ring_bytes(sparse_log), fmt


def ring_bytes(log):
    """Bytes a worker sends on the wire for the compressed weights' payloads in ``log`` (ring algorithms)."""
    return sum(ring_allreduce_bytes(WORKERS, nbytes) if collective == "allreduce"
               else ring_allgather_bytes(WORKERS, nbytes) for _, name, collective, nbytes in log if name in COMPRESSED)


def test_one_fused_step_carries_both_kinds_with_the_unfused_result(device):
    """Ratio 2/9 at N=3 with 12-byte pairs: the 2048-element weight rounds k down (455, allgather), the 3072-element
    one up (683, dense); the dense one joins the fp32 allreduce of the dense tensors: one allgather, one
    allreduce per step, the same bits as one collective per tensor."""
    compressor = make("fp32-int64", 2 / 9)
    compressor.initialize(WORKERS)
    assert [compressor.goes_dense(compressor.num_selects(n), torch.float32, n) for n in COMPRESSED.values()] \
        == [False, True]
    separate, _, _, separate_log = train(lambda: make("fp32-int64", 2 / 9), device=device)
    fused, _, _, fused_log = train(lambda: make("fp32-int64", 2 / 9), fused=True, device=device)
    assert collective_of(separate_log, "0.weight", 0) == ["allgather"]
    assert collective_of(separate_log, "2.weight", 0) == ["allreduce"]
    for (name, a), b in zip(separate.named_parameters(), fused.parameters()):
        assert torch.equal(a, b), name
    for step in range(4):
        assert sorted(c for s, _, c, _ in fused_log if s == step) == ["allgather", "allreduce"], fused_log
    allreduce = [n for s, name, c, n in fused_log if s == 0 and c == "allreduce"][0]
    assert allreduce >= 4 * COMPRESSED["2.weight"]


def test_the_warmup_ratio_switches_per_epoch_and_a_resume_decides_alike():
    """The paper's warm-up (25%, 6.25%, ...) with 12-byte pairs at N=3: dense in epoch 0, pairs from epoch 1.
    The decision is no state: a compressor resumed from epoch 0's state_dict decides it again."""
    def compressor():
        return make("fp32-int64", 0.001, warmup_epochs=4, warmup_coeff=0.25)

    _, _, stats, log = train(compressor, epochs=[0, 0, 1, 1])
    for name in COMPRESSED:
        assert [collective_of(log, name, step) for step in range(4)] == [["allreduce"]] * 2 + [["allgather"]] * 2
    compressed = [4 * sum(COMPRESSED.values())] * 2 + [12 * sum(n // 16 for n in COMPRESSED.values())] * 2
    assert [s["bytes_sent"] - s["control_bytes"] - OTHERS for s in stats] == compressed
    original = compressor()
    original.set_epoch(0)
    resumed = compressor()
    resumed.load_state_dict(original.state_dict())
    resumed.initialize(WORKERS)
    numel = COMPRESSED["2.weight"]
    assert resumed.goes_dense(resumed.num_selects(numel), torch.float32, numel)


@pytest.mark.parametrize("ratio, dense", [(0.3, False), (0.4, True)])
def test_hierarchical_decides_for_the_leaders(ratio, dense):
    """2 hosts x 2 ranks: the compressed exchange joins 2 leaders, so 12-byte pairs switch above a third (0.4),
    not at 0.3 (which 4 workers would switch); the averages are those of the sparse path."""
    made = []

    def make_compressor(**options):
        made.append(TopKCompressor(ratio, min_compress_numel=100, **options))
        return made[-1]

    switched = run_hierarchical(make_compressor, steps=2)
    assert sorted(c.world_size for c in made) == [1, 1, 2, 2]
    sparse = run_hierarchical(lambda: make_compressor(dense_switch=False), steps=2)
    numels = {n: torch.Size(s).numel() for n, s in SHAPES.items() if len(s) > 1}
    pairs = sum(12 * round(n * ratio) for n in numels.values())
    expected = (4 * sum(numels.values()) if dense else pairs) + 4 * SHAPES["bias"][0]
    for rank in range(4):
        averages, stats, _ = switched[rank]
        if rank % 2 == 0:
            assert stats[-1]["bytes_sent"] == expected, (rank, stats[-1])
        for step in range(2):
            for name in SHAPES:
                assert torch.equal(averages[step][name], sparse[rank][0][step][name]), (rank, step, name)


@pytest.mark.parametrize("threshold, dense", [(0.1, True), (0.9, False)])
def test_threshold_decides_from_the_gathered_counts(threshold, dense):
    """ThresholdCompressor: the counts round tells every rank the largest count, so the pairs' round goes densely
    where the allgather of pairs padded to it would move more bytes (90% of 12-byte pairs at N=3), not at 10%;
    the average and the residual are the allgather's, bit for bit."""
    def exchange(switch):
        group = InProcessGroup(WORKERS)

        def worker(comm):
            param = torch.nn.Parameter(torch.zeros(40, 64))
            exchange = Exchange([("w", param)], comm, ThresholdCompressor(threshold, dense_switch=switch),
                                ResidualMemory())
            grad = torch.rand(40, 64, generator=torch.Generator().manual_seed(comm.rank)) - 0.5 * comm.rank
            exchange.finish([exchange.start("w", grad)])
            return grad, exchange.memory.state_dict()["residuals"]["w"]
        results = group.run(worker)
        return results, [collective for rank, _, collective, _ in group.log if rank == 0]

    (switched, switched_log), (pairs, pairs_log) = exchange(True), exchange(False)
    assert switched_log == ["allgather", "allreduce" if dense else "allgather"] and pairs_log == ["allgather"] * 2
    for (average, residual), (reference, reference_residual) in zip(switched, pairs):
        assert torch.equal(average, reference) and torch.equal(residual, reference_residual)
    with pytest.raises(ValueError, match="ThresholdCompressor: dense_switch=1 must be True"):
        ThresholdCompressor(0.1, dense_switch=1)
