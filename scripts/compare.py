"""Compare DGC / baseline training runs: a Markdown summary table plus accuracy, loss and compression plots.

Usage:
  python scripts/compare.py RUN_DIR [RUN_DIR ...] [--target 85.0] [--plots DIR] [--output FILE.md]

Each RUN_DIR is a trainer run directory: its metrics.json gives the table and the per-epoch curves, its
TensorBoard event files (if any) the per-step comm/compression_ratio curve. Epochs and time to the target
test top-1 are recomputed from the run's history for --target. The table goes to stdout (and to --output);
accuracy.png, loss.png and compression_ratio.png (only when some run has ratio events) go to --plots.
"""
import argparse
import json
import math
import os
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from tensorboard.backend.event_processing import event_accumulator  # noqa: E402

DEFAULT_TARGET = 85.0
DEFAULT_PLOTS = "compare_plots"
RATIO_TAG = "comm/compression_ratio"
NUMBER_KEYS = ("num_workers", "epochs", "best_test_top1", "final_test_top1", "final_train_top1",
               "mean_compression_ratio", "dense_bytes_per_step", "bytes_per_step", "total_bytes_sent")
REQUIRED_KEYS = ("run", "model", "history") + NUMBER_KEYS
HISTORY_KEYS = ("epoch", "train_loss", "train_top1", "test_loss", "test_top1", "cumulative_time_s")


class CompareError(Exception):
    """A user-facing problem with the inputs (bad run directory, unreadable metrics.json)."""


def _is_number(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _validate(metrics, source):
    """Raise CompareError unless `metrics` has every key the table and plots need."""
    if not isinstance(metrics, dict):
        raise CompareError(f"{source}: expected a JSON object")
    missing = [k for k in REQUIRED_KEYS if k not in metrics]
    if missing:
        raise CompareError(f"{source}: missing required key(s): {', '.join(missing)}")
    bad = [k for k in NUMBER_KEYS if not _is_number(metrics[k])]
    if bad:
        raise CompareError(f"{source}: expected numbers for key(s): {', '.join(bad)}")
    history = metrics["history"]
    if not isinstance(history, list):
        raise CompareError(f"{source}: 'history' must be a list of per-epoch records")
    for i, entry in enumerate(history):
        if not isinstance(entry, dict) or not all(_is_number(entry.get(k)) for k in HISTORY_KEYS):
            raise CompareError(f"{source}: history[{i}] must have numeric {', '.join(HISTORY_KEYS)}")


def load_ratio_curve(run_dir):
    """Per-step (steps, ratios) of comm/compression_ratio from the run's event files; empty if none."""
    acc = event_accumulator.EventAccumulator(run_dir, size_guidance={event_accumulator.SCALARS: 0})
    acc.Reload()
    if RATIO_TAG not in acc.Tags()["scalars"]:
        return [], []
    events = acc.Scalars(RATIO_TAG)
    return [e.step for e in events], [e.value for e in events]


def load_run(path):
    """Load RUN_DIR/metrics.json (validated) plus its per-step compression-ratio curve."""
    if not os.path.isdir(path):
        raise CompareError(f"run directory {path!r} does not exist or is not a directory (expected a trainer run "
                           "directory containing metrics.json)")
    metrics_path = os.path.join(path, "metrics.json")
    try:
        with open(metrics_path) as f:
            metrics = json.load(f)
    except FileNotFoundError:
        raise CompareError(f"run directory {path!r} has no metrics.json (expected {metrics_path!r}, "
                           "written by the trainer after each epoch)") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CompareError(f"run directory {path!r}: cannot read {metrics_path!r} as JSON: {exc}") from None
    _validate(metrics, f"run directory {path!r}: {metrics_path!r}")
    steps, ratios = load_ratio_curve(path)
    return dict(metrics, path=path, ratio_steps=steps, ratio_values=ratios)


def epochs_to_target(history, target):
    """(epoch, cumulative time in s) of the first history entry with test_top1 >= target, else (None, None)."""
    for entry in history:
        if entry["test_top1"] >= target:
            return entry["epoch"], entry["cumulative_time_s"]
    return None, None


def format_percent(value):
    """71.234 -> '71.23%'."""
    return f"{value:.2f}%"


def format_duration(seconds):
    """Seconds as '4.2 s', '45 s', '12.3 min' or '7.25 h'."""
    if seconds < 60:
        return f"{seconds:.3g} s"
    if seconds < 3600:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.2f} h"


def format_bytes(num):
    """Byte count with 3 significant digits and a 1000-based unit: 2300.5 -> '2.3 KB'."""
    units = ("B", "KB", "MB", "GB", "TB")
    for unit in units[:-1]:
        if abs(num) < 999.5:
            return f"{num:.3g} {unit}"
        num /= 1000
    return f"{num:.3g} {units[-1]}"


def format_ratio(ratio):
    """Compression ratio with 4 significant digits: 0.0021 -> '0.0021', 1.0 -> '1'."""
    return f"{ratio:.4g}"


def format_error(run):
    """Mean relative L2 error of the compressed average against the dense one, with its SNR: '0.312 (10.1 dB)';
    '-' for runs that measured none (dense baselines, runs from before the metric)."""
    error, snr = run.get("mean_relative_error"), run.get("mean_snr_db")
    if error is None:
        return "-"
    return f"{error:.3g}" + ("" if snr is None else f" ({snr:.1f} dB)")


def render_table(runs, target):
    """Markdown table (one row per loaded run) with epochs/time to `target` percent test top-1."""
    pct = f"{target:g}%"
    header = ["run", "model", "workers", "epochs", f"epochs to {pct}", f"time to {pct}", "best test top-1",
              "final test top-1", "final train top-1", "mean compression ratio",
              "grad bytes/step/worker (dense -> sent)", "total bytes sent", "relative error (SNR)"]
    rows = []
    for run in runs:
        epoch, seconds = epochs_to_target(run["history"], target)
        rows.append([
            str(run["run"]), str(run["model"]), str(run["num_workers"]), str(run["epochs"]),
            "not reached" if epoch is None else str(epoch),
            "not reached" if seconds is None else format_duration(seconds),
            format_percent(run["best_test_top1"]), format_percent(run["final_test_top1"]),
            format_percent(run["final_train_top1"]), format_ratio(run["mean_compression_ratio"]),
            f"{format_bytes(run['dense_bytes_per_step'])} -> {format_bytes(run['bytes_per_step'])}",
            format_bytes(run["total_bytes_sent"]), format_error(run),
        ])
    widths = [max(len(row[i]) for row in [header] + rows) for i in range(len(header))]
    rule = [":" + "-" * (w - 1) if i < 2 else "-" * (w - 1) + ":" for i, w in enumerate(widths)]

    def fmt(line):  # run/model left-aligned, the numeric columns right-aligned (as the rule says)
        cells = [c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(line, widths))]
        return "| " + " | ".join(cells) + " |"

    return "\n".join(fmt(line) for line in [header, rule] + rows)


def _plot_epochs(runs, key, ylabel, path):
    """Train (dashed) and test (solid) `key` per epoch, one colour per run."""
    fig, ax = plt.subplots(figsize=(8, 5))
    for i, run in enumerate(runs):
        color = f"C{i % 10}"
        epochs = [h["epoch"] for h in run["history"]]
        ax.plot(epochs, [h[f"test_{key}"] for h in run["history"]], color=color, marker=".",
                label=f"{run['run']} test")
        ax.plot(epochs, [h[f"train_{key}"] for h in run["history"]], color=color, linestyle="--",
                label=f"{run['run']} train")
    ax.set_xlabel("epoch")
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _plot_ratio(runs, path):
    """Per-step compression ratio on a log axis (warm-up visible), one line per run with events."""
    fig, ax = plt.subplots(figsize=(8, 5))
    for i, run in enumerate(runs):
        points = [(s, v) for s, v in zip(run["ratio_steps"], run["ratio_values"]) if v > 0 and math.isfinite(v)]
        if points:
            steps, values = zip(*points)
            ax.plot(steps, values, color=f"C{i % 10}", linewidth=1, label=run["run"])
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("compression ratio (bytes sent / dense fp32 bytes)")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_plots(runs, out_dir):
    """Write accuracy.png, loss.png and (if any run has ratio events) compression_ratio.png; return paths."""
    os.makedirs(out_dir, exist_ok=True)
    paths = [os.path.join(out_dir, "accuracy.png"), os.path.join(out_dir, "loss.png")]
    _plot_epochs(runs, "top1", "top-1 accuracy (%)", paths[0])
    _plot_epochs(runs, "loss", "loss", paths[1])
    if any(run["ratio_steps"] for run in runs):
        paths.append(os.path.join(out_dir, "compression_ratio.png"))
        _plot_ratio(runs, paths[-1])
    return paths


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="trainer run directory (has metrics.json)")
    parser.add_argument("--target", type=float, default=DEFAULT_TARGET,
                        help=f"target test top-1 in percent for epochs/time-to-target (default {DEFAULT_TARGET})")
    parser.add_argument("--plots", default=DEFAULT_PLOTS, metavar="DIR",
                        help=f"directory for the PNG plots (default ./{DEFAULT_PLOTS})")
    parser.add_argument("--output", metavar="FILE.md", help="also write the Markdown table to this file")
    return parser.parse_args(argv)


def main(argv=None):
    """CLI entry point; returns the exit status (2 for bad run directories or unwritable outputs)."""
    args = parse_args(argv)
    try:
        runs = [load_run(d) for d in args.run_dirs]
        table = render_table(runs, args.target)
        print(table)
        if args.output:
            with open(args.output, "w") as f:
                f.write(table + "\n")
        for path in write_plots(runs, args.plots):
            print(f"wrote {path}", file=sys.stderr)
    except (CompareError, OSError) as exc:
        print(f"compare.py: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
