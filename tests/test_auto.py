"""compression=auto (training/auto.py, configs/compression/auto.py): the least-lossy-within-5% rule on
injected predictions and on the cost model (a slow link picks DGC, a free one dense), candidates read from
the real config files, calibration that trains nothing, the same record on every rank (horovodrun -np 2),
the choice logged to stdout, TensorBoard and metrics.json and kept on resume, bad options stopped before
training."""
import json
import types

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import dgc.costmodel
import train
from conftest import ROOT, horovodrun, torchrun
from dgc.costmodel import Link, Method
from models import DigitsNet, resnet20
from training import auto
from training.config import load_configs

DIGITS = ["configs/digits/digitsnet.py", "configs/compression/auto.py"]
SHORT = ["train.num_epochs=1", "data.train_fraction=0.3", "train.check_replicas_every=1"]


def base_config():
    return load_configs([ROOT / "configs" / "__init__.py"], root=ROOT / "configs")


def shapes(model):
    return [tuple(p.shape) for p in model.parameters()]


@pytest.fixture
def methods():
    return auto.candidate_methods(base_config(), list(auto.CANDIDATES))


def test_candidates_are_the_config_files_wire_formats(methods):
    assert list(methods) == ["dense", "fp16", "dgc"]     # least lossy first
    assert methods["dense"] == Method("dense") and methods["fp16"] == Method("fp16")
    assert methods["dgc"] == Method("dgc", ratio=0.001, value_bytes=2, index_bytes=2, dense_bytes=2,
                                    min_compress_numel=256, fused=True, switch=True)


def test_a_candidate_config_is_put_back():
    cfg = base_config()
    with auto.candidate(cfg, "dgc"):
        assert cfg.train.fuse_exchange is True and cfg.train.compression.compact_indices is True
    assert cfg.train.compression is None and cfg.train.fuse_exchange is False and cfg.train.memory is None


@pytest.mark.parametrize("model", [resnet20, DigitsNet])
def test_a_slow_link_picks_dgc_and_a_free_one_dense(model, methods):
    params = shapes(model())
    slow = auto.choose(params, 2, 0.5, Link(1.25e6, 1e-4), methods)       # 10 Mbit/s
    free = auto.choose(params, 2, 0.5, Link(1e13, 0.0), methods)
    assert slow["choice"] == "dgc", slow
    assert free["choice"] == "dense", free
    assert slow["predicted_s"]["dgc"] < slow["predicted_s"]["fp16"] < slow["predicted_s"]["dense"]


@pytest.mark.parametrize("seconds, tolerance, expected", [
    ({"dense": 1.04, "fp16": 1.02, "dgc": 1.0}, 0.05, "dense"),     # within 5%: the least lossy
    ({"dense": 1.06, "fp16": 1.049, "dgc": 1.0}, 0.05, "fp16"),
    ({"dense": 1.06, "fp16": 1.051, "dgc": 1.0}, 0.05, "dgc"),
    ({"dense": 1.0, "fp16": 1.0, "dgc": 1.0}, 0.0, "dense"),       # a tie goes to the less lossy
    ({"dense": 2.0, "fp16": 1.0, "dgc": 1.0}, 0.0, "fp16"),
    ({"dense": 1.0, "fp16": 0.5, "dgc": 0.9}, 0.05, "fp16"),
])
def test_least_lossy_within_tolerance_of_the_fastest(monkeypatch, methods, seconds, tolerance, expected):
    monkeypatch.setattr(dgc.costmodel, "predict", lambda shapes, method, *a, **k: types.SimpleNamespace(
        seconds=seconds[method.name], bytes_sent=0))
    record = auto.choose([(10, 10)], 2, 0.1, Link(1e6), methods, tolerance)
    assert record["choice"] == expected and record["predicted_s"] == seconds


def test_calibration_trains_nothing():
    """Forward + backward on a model with BatchNorm, then its parameters, buffers (running statistics,
    batch counts) and gradients are as before."""
    torch.manual_seed(0)
    model = resnet20()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x, y = torch.randn(8, 3, 32, 32), torch.randint(10, (8,))
    seconds = auto.compute_seconds(model, lambda: (x, y), steps=1, passes=2)
    assert seconds > 0
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert all(p.grad is None for p in model.parameters())


def test_every_rank_takes_rank_0s_record():
    """Real horovodrun -np 2: the ranks' compute differs twofold, each measured the link; all print the
    identical record, with the mean of both ranks' compute."""
    result = horovodrun(2, [ROOT / "tests" / "mp" / "auto_checks.py"], timeout=120)
    records = dict(line.split("auto-record ", 1)[1].split(" ", 1) for line in result.stdout.splitlines()
                   if "auto-record " in line)
    assert sorted(records) == ["0", "1"], result.stdout[-3000:]
    assert records["0"] == records["1"]
    record = json.loads(records["0"])
    assert record["link"] == "measured" and record["bandwidth"] > 0 and record["workers"] == 2
    per_rank = record["compute_s_per_rank"]
    assert per_rank[1] > per_rank[0] and record["compute_s"] == pytest.approx(sum(per_rank) / 2)


def test_forced_slow_link_trains_dgc_logs_it_and_resume_keeps_it(tmp_path):
    run = tmp_path / "run"
    args = ["train.py", "--configs", *DIGITS, *SHORT, "train.compression.bandwidth=1e5", "--run-dir", run]
    out = horovodrun(2, args).stdout
    assert "auto: chose dgc (predicted s/step: dense " in out, out[-3000:]
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["auto"]["choice"] == "dgc" and metrics["compression"] == "DGCCompressor"
    assert metrics["auto"]["bandwidth"] == 1e5 and metrics["auto"]["link"] == "given"
    assert set(metrics["auto"]["predicted_s"]) == {"dense", "fp16", "dgc"}
    assert metrics["history"][0]["compression_ratio"] < 0.01          # DGC trained, not dense
    events = EventAccumulator(str(run), size_guidance={"tensors": 0})
    events.Reload()
    text = events.Tensors("auto/text_summary")[0].tensor_proto.string_val[0].decode()
    assert "auto: chose dgc" in text and '"choice": "dgc"' in text
    direct = tmp_path / "direct"     # the chosen candidate's files from the start: calibration trained nothing
    horovodrun(2, ["train.py", "--configs", DIGITS[0], "configs/compression/dgc.py", "configs/dgc/compact.py", *SHORT,
                   "train.fuse_exchange=True", "--run-dir", direct])
    same = json.loads((direct / "metrics.json").read_text())["history"][0]
    assert [metrics["history"][0][k] for k in ("train_loss", "test_loss", "bytes_sent")] == \
        [same[k] for k in ("train_loss", "test_loss", "bytes_sent")]
    out = horovodrun(2, args[:-2] + ["train.num_epochs=2", "--run-dir", run]).stdout
    assert "auto: keeping dgc, the choice recorded in" in out and "auto: chose" not in out, out[-3000:]
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["auto"]["choice"] == "dgc" and metrics["epochs"] == 2
    assert metrics["history"][1]["compression_ratio"] < 0.01


def test_torch_backend_free_link_trains_dense(tmp_path):
    run = tmp_path / "run"
    out = torchrun(2, ["train.py", "--backend", "torch", "--configs", *DIGITS, *SHORT,
                       "train.compression.bandwidth=1e13", "--run-dir", run]).stdout
    assert "auto: chose dense" in out, out[-3000:]
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["compression"] == "none" and metrics["history"][0]["compression_ratio"] == 1.0


@pytest.mark.parametrize("override, message", [
    ("train.compression.candidates=('dense','zip')", "has unknown 'zip'; expected distinct names among dense"),
    ("train.compression.candidates=()", "must be a non-empty list"),
    ("train.compression.calibration_steps=0", "calibration_steps=0 must be an int >= 1"),
    ("train.compression.tolerance=1.5", "tolerance=1.5 must be a number in [0, 1)"),
    ("train.compression.latency=0.001", "latency and burst are given with bandwidth"),
    ("train.compression.bandwidth=-5", "bandwidth=-5 must be None (measured) or a number > 0"),
    ("train.hierarchical=True", "train.hierarchical=True with compression=auto"),
    ("train.amp='fp16'", "compression=auto, candidate 'dense': train.amp='fp16' needs a compression"),
])
def test_bad_options_fail_before_training(override, message, tmp_path, capsys):
    assert train.main(["--configs", *[str(ROOT / c) for c in DIGITS], override, "--run-dir",
                       str(tmp_path / "run")]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "run").exists()
