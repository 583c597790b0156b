"""The cost model (dgc/costmodel.py) against the code it models: the bytes and collectives it predicts are those
the real exchange counts for ResNet-20 and VGG-16 gradients (every wire format, PowerSGD's two rounds, the
fused exchange), and its time model behaves as an alpha-beta model with overlap must."""
import inspect
import subprocess
import sys
from dataclasses import replace

import pytest
import torch

from dgc.compressors.dgc import DGCCompressor
from dgc.compressors.fp16 import FP16Compressor
from dgc.compressors.powersgd import PowerSGDCompressor
from dgc.compressors.sparse import SparseCompressor
from dgc.compressors.topk import TopKCompressor
from dgc.costmodel import (Constants, Link, Method, crossover_workers, parse_latency, parse_rate, predict,
                           slower_than_dense_from, warmup_predictions)
from dgc.exchange import Exchange
from dgc.fused import FusedCommunicator
from dgc.inprocess import InProcessGroup
from models import resnet20, vgg16


@pytest.fixture(scope="module")
def nets():
    torch.manual_seed(0)
    return {"resnet20": list(resnet20().named_parameters()), "vgg16": list(vgg16().named_parameters())}


def exchanged(named, compressor=None, dense=None, fused=False, workers=1):
    """Run one step of the real exchange over ``named``'s shapes (random gradients, in reverse model order as
    backward produces them) on ``workers`` in-process ranks; rank 0's statistics and fused collectives."""
    def worker(comm):
        communicator = FusedCommunicator(comm) if fused else comm
        exchange = Exchange(named, communicator, compressor() if compressor else None, dense_compressor=dense)
        gen = torch.Generator().manual_seed(comm.rank)
        pending = [exchange.start(name, torch.randn(p.shape, generator=gen)) for name, p in reversed(named)]
        exchange.finish(pending)
        return exchange.collect(), communicator.collectives if fused else None
    return InProcessGroup(workers).run(worker)[0]


def shapes_of(named):
    return [tuple(p.shape) for _, p in named]


LINK = Link(bandwidth=12.5e6, latency=50e-6)
CASES = [
    ("dense", None, None, Method("dense")),
    ("fp16", lambda: FP16Compressor(), FP16Compressor(), Method("fp16")),
    ("dgc int64", lambda: DGCCompressor(0.001), None, Method("dgc")),
    ("dgc int32 fp16", lambda: DGCCompressor(0.001, fp16_values=True, int32_indices=True), None,
     Method("dgc", value_bytes=2, index_bytes=4)),
    ("dgc compact", lambda: DGCCompressor(0.001, fp16_values=True, compact_indices=True, min_compress_numel=256),
     FP16Compressor(), Method("dgc", value_bytes=2, index_bytes=2, dense_bytes=2, min_compress_numel=256)),
    ("top-k warm-up int8", lambda: TopKCompressor(0.25, int8_values=True, compact_indices=True), None,
     Method("dgc", ratio=0.25, value_bytes=1, index_bytes=2)),
    ("powersgd r4", lambda: PowerSGDCompressor(rank=4), None, Method("powersgd", rank=4)),
]


@pytest.mark.parametrize("model", ["resnet20", "vgg16"])
@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bytes_and_collectives_are_those_the_exchange_counts(nets, model, case):
    _, compressor, dense, method = case
    named = nets[model]
    stats, _ = exchanged(named, compressor, dense)
    p = predict(shapes_of(named), method, 2, LINK, compute=0.1)
    assert p.bytes_sent == stats["bytes_sent"]
    assert p.collectives == stats["collectives"]


@pytest.mark.parametrize("model", ["resnet20", "vgg16"])
def test_fused_collectives_and_bytes_are_the_fused_exchanges(nets, model):
    named = nets[model]
    stats, fused = exchanged(named, lambda: DGCCompressor(0.001, fp16_values=True, compact_indices=True,
                                                          min_compress_numel=256), FP16Compressor(), fused=True)
    method = Method("dgc", value_bytes=2, index_bytes=2, dense_bytes=2, min_compress_numel=256, fused=True)
    p = predict(shapes_of(named), method, 2, LINK, compute=0.1)
    assert (p.bytes_sent, p.collectives) == (stats["bytes_sent"], fused) == (p.bytes_sent, 2)


def test_powersgd_fused_puts_each_round_in_one_collective(nets):
    named = nets["resnet20"]
    _, fused = exchanged(named, lambda: PowerSGDCompressor(rank=4), fused=True)
    p = predict(shapes_of(named), Method("powersgd", rank=4, fused=True), 2, LINK, compute=0.1)
    assert p.collectives == fused == 2     # P's with the dense tensors (all fp32 allreduces), then Q's


@pytest.mark.skipif("dense_switch" not in inspect.signature(SparseCompressor.__init__).parameters,
                    reason="the exchange's sparse/dense switch (helper S) is not on this branch")
@pytest.mark.parametrize("workers", [2, 3])
def test_switch_decision_matches_the_exchange(nets, workers):
    """At 25% with fp32 values and int64 indices (12 bytes a pair) the allgather outgrows a dense fp32
    allreduce from 3 workers on: the real exchange's switch and the model's agree on the bytes sent."""
    named = nets["resnet20"]
    stats, _ = exchanged(named, lambda: DGCCompressor(0.25), workers=workers)
    p = predict(shapes_of(named), Method("dgc", ratio=0.25), workers, LINK, compute=0.1)
    assert (p.dense_switched > 0) == (workers == 3)
    assert p.bytes_sent == stats["bytes_sent"]


def test_the_switch_sends_the_selection_densely_where_pairs_are_larger():
    shapes = [(256, 256)]
    on = predict(shapes, Method("dgc", ratio=0.25), 8, LINK)
    off = predict(shapes, Method("dgc", ratio=0.25, switch=False), 8, LINK)
    assert (on.dense_switched, on.bytes_sent) == (1, 4 * 256 * 256)
    assert (off.dense_switched, off.bytes_sent) == (0, 12 * 16384)
    assert on.wire_bytes < off.wire_bytes
    assert predict(shapes, Method("dgc", ratio=0.001), 8, LINK).dense_switched == 0


def test_pure_python_import():
    code = "import sys, dgc.costmodel; print(sorted(m for m in ('torch', 'numpy') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


SHAPES = [(64, 3, 3, 3), (64,), (128, 64, 3, 3), (128,), (256, 128, 3, 3), (10, 256), (10,)]
ALL = [Method("dense"), Method("fp16"), Method("powersgd"), Method("dgc"), Method("dgc", fused=True),
       Method("dgc_hier", ranks_per_host=2, fused=True)]
LOCAL = Link(100e9, 5e-6)


@pytest.mark.parametrize("method", ALL, ids=lambda m: m.name + ("_fused" if m.fused else ""))
def test_time_grows_as_the_link_slows_and_never_beats_compute(method):
    seconds = [predict(SHAPES, method, 4, Link(bw, 1e-4), 0.05, LOCAL).seconds for bw in (1e10, 1e8, 1e6, 1e4)]
    assert seconds == sorted(seconds) and seconds[-1] > seconds[0] >= 0.05
    latencies = [predict(SHAPES, method, 4, Link(1e8, lat), 0.05, LOCAL).seconds for lat in (0, 1e-4, 1e-2)]
    assert latencies == sorted(latencies) and latencies[-1] > latencies[0]


def test_overlap_hides_an_unfused_exchange_under_the_backward_pass():
    """Unfused collectives start during the backward pass; fused ones after it: without latency the fused
    step is never faster, and a transfer shorter than the backward pass is mostly hidden."""
    link = Link(1e7, 0.0)
    unfused = predict(SHAPES, Method("dense"), 2, link, compute=1.0)
    fused = predict(SHAPES, Method("dgc", ratio=1.0, fused=True, switch=False), 2, link, compute=1.0)
    assert unfused.exchange < 0.5 and unfused.exposed < unfused.exchange / 3
    assert predict(SHAPES, Method("dense"), 2, link, 1.0, constants=Constants(backward_fraction=0)).exposed \
        == pytest.approx(unfused.exchange, rel=0.05)
    assert fused.seconds >= predict(SHAPES, Method("dgc", ratio=1.0, switch=False), 2, link, 1.0).seconds


def test_one_worker_exchanges_nothing():
    for method in ALL[:5]:
        p = predict(SHAPES, method, 1, Link(1.0, 1.0), compute=0.2, constants=Constants().scaled(0))
        assert p.seconds == pytest.approx(0.2) and p.exchange == 0


def test_crossover_is_where_the_allgather_outgrows_the_allreduce():
    """One 10^6-element tensor at 0.1% with 6-byte pairs: (N - 1) 6000 > 2 (N - 1) / N 4 10^6 from N = 1334."""
    method = Method("dgc", value_bytes=2, index_bytes=4, min_compress_numel=1)
    assert crossover_workers([(1000, 1000)], method) == 1334
    assert crossover_workers([(1000, 1000)], replace(method, ratio=0.25)) == 6


@pytest.mark.parametrize("rate, compute", [(1.25e8, 0.2), (1.25e9, 0.05)])
def test_slower_than_dense_from_is_the_first_n_where_dgc_loses(rate, compute):
    shapes = [(512, 512, 3, 3)] * 4 + [(1000, 2048)]
    method = Method("dgc", value_bytes=2, index_bytes=2, min_compress_numel=256, fused=True)
    link, gpu = Link(rate, 20e-6), Constants.assumed_gpu()
    n = slower_than_dense_from(shapes, method, link, compute, constants=gpu)

    def gap(workers):
        return (predict(shapes, method, workers, link, compute, constants=gpu).seconds
                - predict(shapes, Method("dense"), workers, link, compute, constants=gpu).seconds)
    assert n is not None and gap(n) > 0 and (n == 2 or gap(n - 1) <= 0)
    assert all(gap(m) > 0 for m in (n, 2 * n, 8 * n))
    assert slower_than_dense_from(shapes, method, Link(1e3), compute, constants=gpu, limit=64) is None


def test_warmup_is_slower_than_dense_at_scale_only_in_its_first_epochs():
    shapes = [(512, 512, 3, 3)] * 8
    link = Link(1.25e9, 20e-6)
    method = Method("dgc", value_bytes=2, index_bytes=2, dense_bytes=2, min_compress_numel=256, switch=False)
    epochs = warmup_predictions(shapes, method, 64, link, compute=0.1, constants=Constants.assumed_gpu())
    dense = predict(shapes, Method("dense"), 64, link, 0.1, constants=Constants.assumed_gpu()).seconds
    assert [round(r, 6) for _, r, _ in epochs] == [0.25, 0.0625, 0.015625, 0.003906, 0.001]
    slower = [e > dense for _, _, e in ((e, r, p.seconds) for e, r, p in epochs)]
    assert slower[0] and not slower[-1]


@pytest.mark.parametrize("bad, match", [
    (lambda: Method("topk"), "name='topk'"), (lambda: Method("dgc", ratio=0), "ratio=0"),
    (lambda: Method("dgc", index_bytes=3), "index_bytes=3"), (lambda: Link(0), "bandwidth=0"),
    (lambda: Link(1e9, -1), "latency=-1"), (lambda: predict(SHAPES, Method("dense"), 0, LINK), "workers=0"),
    (lambda: predict([(3, 0)], Method("dense"), 2, LINK), r"\(3, 0\)"),
    (lambda: predict(SHAPES, Method("dgc_hier", ranks_per_host=2), 4, LINK), "local_link"),
    (lambda: predict(SHAPES, Method("dgc_hier", ranks_per_host=3), 4, LINK, local_link=LOCAL), "workers=4"),
    (lambda: parse_rate("10mbps"), "'10mbps'"), (lambda: parse_rate("-1gbit"), "'-1gbit'"),
    (lambda: parse_latency("fast"), "'fast'"),
])
def test_bad_input_is_named(bad, match):
    with pytest.raises(ValueError, match=match):
        bad()


def test_a_timed_allreduce_gives_the_link_that_predicts_it_back():
    link = Link.from_allreduce(4, 4_000_000, 0.01, latency=1e-3)
    assert link.bandwidth == pytest.approx(6e6 / 0.009) and link.latency == 1e-3
    assert predict([(1000, 1000)], Method("dense"), 4, link).exchange == pytest.approx(0.01)
    with pytest.raises(ValueError, match="workers=1"):
        Link.from_allreduce(1, 4_000_000, 0.01)
    with pytest.raises(ValueError, match="seconds=0.001"):
        Link.from_allreduce(2, 4_000_000, 0.001, latency=1e-3)


def test_rates_and_latencies_parse_in_tc_spelling():
    assert parse_rate("10mbit") == 1.25e6 and parse_rate("25gbit") == 25e9 / 8 and parse_rate("100MBIT") == 12.5e6
    assert parse_latency("20us") == pytest.approx(20e-6) and parse_latency("1ms") == 1e-3 and parse_latency("0") == 0


def test_validation_models_what_bench_network_ran(nets):
    """validate_costmodel.py's methods are bench_network.py's: the bytes and collectives each recorded cell
    reports (docs/network/bench_network.json) are the model's for that method, N and model."""
    import json
    import pathlib
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent / "scripts"))
    from validate_costmodel import METHODS

    root = pathlib.Path(__file__).resolve().parent.parent
    rows = json.loads((root / "docs/network/bench_network.json").read_text())
    checked = 0
    for row in rows:
        for method, cell in row["cells"].items():
            if method == "limit":
                continue
            p = predict(shapes_of(nets[row["model"]]), METHODS[method], row["workers"], LINK)
            assert (p.bytes_sent, p.collectives) == (cell["bytes"], cell["collectives"]), (row["model"], method)
            checked += 1
    assert checked == 80
    local = Link(1e9, 1e-4)
    for row in json.loads((root / "docs/network/hierarchical.json").read_text()):
        for method in ("dgc_fused", "dgc_hier"):     # the ResNet-20 rows predate the non-finite flag
            if row["model"] == "resnet20":
                p = predict(shapes_of(nets["resnet20"]), METHODS[method], row["workers"], LINK, local_link=local)
                assert (p.bytes_sent, p.collectives) == (row["cells"][method]["bytes"], 2)


def test_constants_fitted_on_a_bench_json_are_written_and_read_back(tmp_path, capsys):
    """bench_network.py --json's cells -> validate_costmodel.py --constants -> Constants.from_file: the
    plumbing bench_network.py --constants runs (a tiny synthetic record, not a measurement)."""
    import json
    import pathlib
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent / "scripts"))
    import bench_network
    import validate_costmodel

    with pytest.raises(SystemExit):
        bench_network.parse_args(["--constants", str(tmp_path / "c.json")])
    assert "--constants needs --json" in capsys.readouterr().err
    cell = {"bytes": 0, "collectives": 0, "size": 2}
    rows = [{"workers": 2, "model": "tiny", "rate": rate, "cells": {
        "limit": dict(cell, seconds=0.05), "dense": dict(cell, seconds=0.06 if rate == "none" else 0.2),
        "dgc_fused": dict(cell, seconds=0.07)}} for rate in ("none", "10mbit")]
    (tmp_path / "bench.json").write_text(json.dumps(rows))
    assert validate_costmodel.main(["--json", str(tmp_path / "bench.json"), "--hierarchical", "",
                                    "--out", str(tmp_path / "v.md"), "--constants", str(tmp_path / "c.json")]) == 0
    constants = Constants.from_file(tmp_path / "c.json")
    assert constants.dgc_compress_per_element > 0 and "2-worker tiny dense at 10mbit" in (tmp_path / "v.md").read_text()
    (tmp_path / "bad.json").write_text('{"dgc_speed": 1}')
    with pytest.raises(ValueError, match="dgc_speed"):
        Constants.from_file(tmp_path / "bad.json")
