"""Tests for scripts/compare.py on small synthetic run directories (metrics.json + real event files)."""
import importlib.util
import json
import pathlib

import pytest
from tensorboardX import SummaryWriter

SCRIPT = pathlib.Path(__file__).resolve().parents[1] / "scripts" / "compare.py"
_spec = importlib.util.spec_from_file_location("compare", SCRIPT)
compare = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(compare)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
RATIOS_A = [1.0, 0.25, 0.0625, 0.015625, 0.00390625, 0.0009765625]


def _history(test_top1, train_top1, cumulative):
    rows, prev = [], 0.0
    for i, (test, train, cum) in enumerate(zip(test_top1, train_top1, cumulative), start=1):
        rows.append({"epoch": i, "train_loss": 2.0 / i, "train_top1": train, "test_loss": 2.2 / i,
                     "test_top1": test, "test_top5": 95.0, "epoch_time_s": cum - prev, "cumulative_time_s": cum,
                     "images_per_s": 400.0, "cumulative_bytes_sent": 1000 * i})
        prev = cum
    return rows


def _write_run(path, metrics, ratios=None):
    path.mkdir()
    (path / "metrics.json").write_text(json.dumps(metrics))
    if ratios:
        writer = SummaryWriter(str(path))
        for step, ratio in enumerate(ratios, start=1):
            writer.add_scalar("comm/compression_ratio", ratio, step)
        writer.close()
    return str(path)


@pytest.fixture
def run_a(tmp_path):
    """DGC run that reaches 85% at epoch 2 (210 s), with per-step ratio events."""
    return _write_run(tmp_path / "run_a", {
        "run": "cifar10.resnet20.dgc.np2", "dataset": "cifar10", "model": "resnet20", "num_workers": 2,
        "compression": "dgc", "target_accuracy": 85.0, "epochs": 3,
        "best_test_top1": 88.25, "final_test_top1": 87.9, "final_train_top1": 91.5,
        "epochs_to_target": 2, "time_to_target_s": 210.0, "mean_compression_ratio": 0.0021,
        "dense_bytes_per_step": 1078888, "bytes_per_step": 2300.5, "total_bytes_sent": 123456789,
        "wall_time_s": 335.0, "mean_relative_error": 0.31234, "mean_snr_db": 10.107,
        "history": _history([60.0, 88.25, 87.9], [55.0, 89.0, 91.5], [100.0, 210.0, 330.0]),
    }, RATIOS_A)


@pytest.fixture
def run_b(tmp_path):
    """Dense baseline that never reaches 85% (72.5% best), without event files."""
    return _write_run(tmp_path / "run_b", {
        "run": "cifar10.resnet20.baseline.np4", "dataset": "cifar10", "model": "resnet20", "num_workers": 4,
        "compression": "none", "target_accuracy": 85.0, "epochs": 2,
        "best_test_top1": 72.5, "final_test_top1": 72.5, "final_train_top1": 70.125,
        "epochs_to_target": None, "time_to_target_s": None, "mean_compression_ratio": 1.0,
        "dense_bytes_per_step": 1078888, "bytes_per_step": 1078888.0, "total_bytes_sent": 2157776000,
        "wall_time_s": 90.0,
        "history": _history([50.0, 72.5], [45.0, 70.125], [20.0, 45.5]),
    })


def _table_rows(text):
    """Parse a Markdown table into {run name: {column: cell}}."""
    lines = [line for line in text.splitlines() if line.startswith("|")]
    cells = [[c.strip() for c in line.strip("|").split("|")] for line in lines]
    header, body = cells[0], cells[2:]
    return {row[0]: dict(zip(header, row)) for row in body}


def test_table_exact_values(run_a, run_b, tmp_path, capsys):
    assert compare.main([run_a, run_b, "--plots", str(tmp_path / "plots")]) == 0
    rows = _table_rows(capsys.readouterr().out)
    assert rows["cifar10.resnet20.dgc.np2"] == {
        "run": "cifar10.resnet20.dgc.np2", "model": "resnet20", "workers": "2", "epochs": "3",
        "epochs to 85%": "2", "time to 85%": "3.5 min", "best test top-1": "88.25%",
        "final test top-1": "87.90%", "final train top-1": "91.50%", "mean compression ratio": "0.0021",
        "grad bytes/step/worker (dense -> sent)": "1.08 MB -> 2.3 KB", "total bytes sent": "123 MB",
        "relative error (SNR)": "0.312 (10.1 dB)",
    }
    assert rows["cifar10.resnet20.baseline.np4"] == {
        "run": "cifar10.resnet20.baseline.np4", "model": "resnet20", "workers": "4", "epochs": "2",
        "epochs to 85%": "not reached", "time to 85%": "not reached", "best test top-1": "72.50%",
        "final test top-1": "72.50%", "final train top-1": "70.12%", "mean compression ratio": "1",
        "grad bytes/step/worker (dense -> sent)": "1.08 MB -> 1.08 MB", "total bytes sent": "2.16 GB",
        "relative error (SNR)": "-",
    }


def test_target_override_recomputes_from_history(run_a, run_b, tmp_path, capsys):
    assert compare.main([run_a, run_b, "--target", "70", "--plots", str(tmp_path / "plots")]) == 0
    rows = _table_rows(capsys.readouterr().out)
    a, b = rows["cifar10.resnet20.dgc.np2"], rows["cifar10.resnet20.baseline.np4"]
    assert (a["epochs to 70%"], a["time to 70%"]) == ("2", "3.5 min")
    assert (b["epochs to 70%"], b["time to 70%"]) == ("2", "45.5 s")

    runs = [compare.load_run(run_a), compare.load_run(run_b)]
    rows = _table_rows(compare.render_table(runs, 50.0))
    a, b = rows["cifar10.resnet20.dgc.np2"], rows["cifar10.resnet20.baseline.np4"]
    assert (a["epochs to 50%"], a["time to 50%"]) == ("1", "1.7 min")
    assert (b["epochs to 50%"], b["time to 50%"]) == ("1", "20 s")
    rows = _table_rows(compare.render_table(runs, 95.5))
    assert all(r["epochs to 95.5%"] == r["time to 95.5%"] == "not reached" for r in rows.values())


def test_epochs_to_target():
    history = _history([60.0, 85.0, 90.0], [0.0, 0.0, 0.0], [10.0, 20.0, 30.0])
    assert compare.epochs_to_target(history, 85.0) == (2, 20.0)
    assert compare.epochs_to_target(history, 90.5) == (None, None)
    assert compare.epochs_to_target([], 85.0) == (None, None)


@pytest.mark.parametrize("func, value, expected", [
    ("format_bytes", 0, "0 B"), ("format_bytes", 999, "999 B"), ("format_bytes", 999.6, "1 KB"),
    ("format_bytes", 2300.5, "2.3 KB"), ("format_bytes", 1078888, "1.08 MB"),
    ("format_bytes", 2157776000, "2.16 GB"), ("format_bytes", 5e12, "5 TB"),
    ("format_duration", 4.2, "4.2 s"), ("format_duration", 45, "45 s"), ("format_duration", 738, "12.3 min"),
    ("format_duration", 26100, "7.25 h"),
    ("format_ratio", 0.0021, "0.0021"), ("format_ratio", 0.00213456, "0.002135"), ("format_ratio", 1.0, "1"),
    ("format_percent", 71.234, "71.23%"),
])
def test_formatters(func, value, expected):
    assert getattr(compare, func)(value) == expected


def test_load_run_reads_ratio_events(run_a, run_b):
    a, b = compare.load_run(run_a), compare.load_run(run_b)
    assert a["ratio_steps"] == [1, 2, 3, 4, 5, 6]
    assert a["ratio_values"] == pytest.approx(RATIOS_A)
    assert a["path"] == run_a and a["epochs"] == 3
    assert b["ratio_steps"] == [] and b["ratio_values"] == []


def test_plots_and_output_file(run_a, run_b, tmp_path, capsys):
    plots, out = tmp_path / "plots", tmp_path / "summary.md"
    assert compare.main([run_a, run_b, "--plots", str(plots), "--output", str(out)]) == 0
    captured = capsys.readouterr()
    assert out.read_text() == captured.out
    for name in ("accuracy.png", "loss.png", "compression_ratio.png"):
        data = (plots / name).read_bytes()
        assert len(data) > 1000 and data.startswith(PNG_MAGIC)
        assert f"wrote {plots / name}" in captured.err


def test_no_ratio_plot_without_events(run_b, tmp_path):
    paths = compare.write_plots([compare.load_run(run_b)], str(tmp_path / "plots"))
    assert [pathlib.Path(p).name for p in paths] == ["accuracy.png", "loss.png"]
    assert not (tmp_path / "plots" / "compression_ratio.png").exists()


def _corrupt(tmp_path):
    run = tmp_path / "corrupt"
    run.mkdir()
    (run / "metrics.json").write_text('{"run": "x", "history": [')
    return str(run)


def _missing_keys(tmp_path):
    run = tmp_path / "partial"
    run.mkdir()
    (run / "metrics.json").write_text(json.dumps({"run": "x", "model": "resnet20"}))
    return str(run)


def _no_metrics(tmp_path):
    run = tmp_path / "empty"
    run.mkdir()
    return str(run)


@pytest.mark.parametrize("make, expected", [
    (lambda tmp: str(tmp / "does_not_exist"), "does not exist"),
    (_no_metrics, "has no metrics.json"),
    (_corrupt, "cannot read"),
    (_missing_keys, "missing required key(s)"),
])
def test_bad_run_dir_errors(make, expected, run_a, tmp_path, capsys):
    bad = make(tmp_path)
    with pytest.raises(compare.CompareError) as info:
        compare.load_run(bad)
    assert bad in str(info.value) and expected in str(info.value)

    assert compare.main([run_a, bad, "--plots", str(tmp_path / "plots")]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert bad in captured.err and expected in captured.err and "metrics.json" in captured.err
    assert "Traceback" not in captured.err
    assert not (tmp_path / "plots").exists()
