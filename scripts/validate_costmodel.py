"""The cost model (dgc/costmodel.py) against the README's shaped-link table: calibrate its few constants on a
stated subset of the recorded cells, predict every cell, print predicted vs measured with the error per cell,
and write the table to docs/costmodel/validation.md.

    .venv/bin/python scripts/validate_costmodel.py [--json docs/network/bench_network.json]
        [--hierarchical docs/network/hierarchical.json] [--out docs/costmodel/validation.md]

No new timing: it reads what scripts/bench_network.py recorded (median seconds per step). Each method is
modelled as bench_network.py ran it: dense and fp16 through Horovod's DistributedOptimizer; PowerSGD rank 4
(fp32 dense tensors); DGC 0.001 with fp16 values and int32 indices, one collective per tensor; DGC fused
with configs/dgc/compact.py's format; hierarchical DGC at 0.002 between 2 hosts of 2 ranks. The recorded
runs predate the sparse/dense switch, so it is off (at N <= 4 and 0.001 it would not switch anyway).

Calibration (the constants are fitted here, never per cell):
- compute: the "compute only" (limit) cell of the same N and model: the same workers, no exchange;
- the unshaped link's effective bandwidth, the per-collective cost and a codec scale (on
  ``Constants.bench_figures()``, measured with 2 threads in one process; the workers run one thread each,
  two of them on two cores; dgc.costmodel.CPU_SCALE holds the fitted scale) are fitted together on the
  2-worker unshaped and 1 Gbit/s cells (least squares of log error, on a grid);
- the tbf links' efficiency (the fraction of the tc rate TCP gets) from one cell: 2-worker VGG-16 dense
  at 10 Mbit/s; tbf's 256 KB burst is the Link's ``burst``; a shaped link moves bytes at the lower of the
  tbf rate times that efficiency and the unshaped link's rate (the host copies every byte too).
Then every cell is predicted with those constants. Latency is not shaped (netem is not available here):
the latency term is the collectives' count times the fitted per-collective cost.
"""
import argparse
import itertools
import json
import math
import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from dgc.costmodel import CPU_SCALE, Constants, Link, Method, parse_rate, predict  # noqa: E402

BURST = 256 * 1024
"""tc's ``burst 256kb`` (kilobytes) of bench_network.py's tbf qdiscs."""
METHODS = {
    "dense": Method("dense"),
    "fp16": Method("fp16"),
    "powersgd": Method("powersgd", rank=4, switch=False),
    "dgc": Method("dgc", value_bytes=2, index_bytes=4, switch=False),
    "dgc_fused": Method("dgc", value_bytes=2, index_bytes=2, dense_bytes=2, min_compress_numel=256, fused=True,
                        switch=False),
    "dgc_hier": Method("dgc_hier", value_bytes=2, index_bytes=2, dense_bytes=2, min_compress_numel=256, fused=True,
                       switch=False, ranks_per_host=2),
}
"""What scripts/bench_network.py's methods ran (its worker())."""
LABELS = {"dense": "dense fp32", "fp16": "fp16", "powersgd": "PowerSGD r4", "dgc": "DGC", "dgc_fused": "DGC fused",
          "dgc_hier": "DGC hier."}
EFFICIENCY_CELL = (2, "vgg16", "10mbit", "dense")
FIT_RATES = ("none", "1gbit")


class Calibration:
    """The fitted constants and the links they give."""

    def __init__(self, unshaped, latency, codec_scale, efficiency=1.0):
        self.unshaped, self.latency, self.codec_scale, self.efficiency = unshaped, latency, codec_scale, efficiency
        self.constants = Constants.bench_figures().scaled(codec_scale)

    def link(self, rate):
        if rate == "none":
            return Link(self.unshaped, self.latency)
        shaped = parse_rate(rate) * self.efficiency
        return Link(min(shaped, self.unshaped), self.latency, BURST)

    def predict(self, shapes, method, workers, rate, compute):
        local = Link(self.unshaped, self.latency)
        return predict(shapes, METHODS[method], workers, self.link(rate), compute, local, self.constants)


def cells(rows, hierarchical=False):
    """(N, model, rate, method, measured seconds, compute seconds) of every recorded cell but the limit."""
    out = []
    for row in rows:
        limit = row["cells"].get("limit")
        for method, cell in row["cells"].items():
            if method == "limit" or limit is None:
                continue
            out.append((row["workers"], row["model"], row["rate"], method, cell["seconds"], limit["seconds"]))
    return out


def limits_by(rows):
    """Compute-only seconds per (N, model) where a row at the same N and model lacks its own limit."""
    return {(r["workers"], r["model"]): r["cells"]["limit"]["seconds"] for r in rows if "limit" in r["cells"]}


def efficiency_cell(all_cells):
    """The cell the tbf efficiency comes from: :data:`EFFICIENCY_CELL` where recorded, else the 2-worker dense
    cell of the most bytes at the slowest shaped rate (a run of other models or rates); None: no such cell."""
    dense = [c for c in all_cells if c[0] == 2 and c[3] == "dense" and c[2] != "none"]
    if any(c[:4] == EFFICIENCY_CELL for c in dense):
        return next(c for c in dense if c[:4] == EFFICIENCY_CELL)
    return min(dense, key=lambda c: (parse_rate(c[2]), -c[4]), default=None)


def fit(all_cells, shapes):
    """Grid search of (unshaped bandwidth, per-collective cost, codec scale) on the 2-worker unshaped and
    1 Gbit/s cells, then the tbf efficiency from :func:`efficiency_cell` (bisection; 1 without one)."""
    subset = [c for c in all_cells if c[0] == 2 and c[2] in FIT_RATES]
    if not subset:
        raise ValueError("no 2-worker cell at an unshaped or 1gbit link to fit the constants on (run "
                         "bench_network.py with --workers 2 and --rates including none or 1gbit)")

    def loss(cal):
        return sum(math.log(cal.predict(shapes[m], meth, n, rate, comp).seconds / seconds) ** 2
                   for n, m, rate, meth, seconds, comp in subset)

    best = None
    grids = ([12.5e6 * 2 ** (i / 2) for i in range(16)], [0.0] + [1e-4 * 2 ** i for i in range(8)],
             [0.5 * 2 ** (i / 2) for i in range(9)])
    for unshaped, latency, scale in itertools.product(*grids):
        cal = Calibration(unshaped, latency, scale)
        value = loss(cal)
        if best is None or value < best[0]:
            best = (value, cal)
    cal = best[1]
    cell = efficiency_cell(all_cells)
    if cell is not None:
        n, model, rate, method, measured, compute = cell
        low, high = 0.05, 2.0
        for _ in range(50):
            cal.efficiency = (low + high) / 2
            if cal.predict(shapes[model], method, n, rate, compute).seconds > measured:
                low = cal.efficiency
            else:
                high = cal.efficiency
    return cal, subset, cell


def table(all_cells, shapes, cal, subset, title, efficiency=None):
    """Markdown lines of predicted vs measured per cell, and the errors."""
    lines = [f"| N | model | link | method | measured s/step | predicted s/step | error | exposed exchange (model) "
             f"| collectives | used for |",
             "| ---: | :--- | :--- | :--- | ---: | ---: | ---: | ---: | ---: | :--- |"]
    errors, predicted = [], {}
    for cell in all_cells:
        n, model, rate, method, seconds, compute = cell
        p = cal.predict(shapes[model], method, n, rate, compute)
        error = p.seconds / seconds - 1
        role = ("efficiency" if cell == efficiency else "fit" if cell in subset else "")
        errors.append((cell, error, role))
        predicted[cell] = p.seconds
        lines.append(f"| {n} | {model} | {rate} | {LABELS[method]} | {seconds:.3f} | {p.seconds:.3f} | "
                     f"{100 * error:+.1f}% | {p.exposed:.3f} | {p.collectives:g} | {role} |")
    return [f"#### {title}", ""] + lines + [""], errors, predicted


def pivot(errors, predictions):
    """Markdown lines of one row per (N, model, link): measured / predicted (error) per method."""
    methods = [m for m in LABELS if any(c[3] == m for c, _, _ in errors)]
    rows = {}
    for cell, error, role in errors:
        mark = "\u2020" if role else ""
        rows.setdefault(cell[:3], {})[cell[3]] = (f"{cell[4]:.3f} / {predictions[cell]:.3f} "
                                                  f"({100 * error:+.0f}%){mark}")
    lines = ["| N | model | link | " + " | ".join(LABELS[m] for m in methods) + " |",
             "| ---: | :--- | :--- |" + " :---: |" * len(methods)]
    for (n, model, rate), cells in rows.items():
        lines.append(f"| {n} | {model} | {rate} | " + " | ".join(cells.get(m, "-") for m in methods) + " |")
    return lines


def summary(errors, what):
    """A line with the mean absolute and worst error of ``errors`` (and the share within 15%)."""
    if not errors:
        return f"- {what}: no cells"
    absolute = [abs(e) for _, e, _ in errors]
    worst = max(errors, key=lambda x: abs(x[1]))[0]
    within = sum(a <= 0.15 for a in absolute)
    mean = 100 * sum(absolute) / len(absolute)
    return (f"- {what}: {within} of {len(absolute)} within 15%, mean |error| {mean:.1f}%, "
            f"worst {100 * max(absolute):.1f}% ({worst[0]} workers, {worst[1]}, {worst[2]}, {LABELS[worst[3]]})")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", default="docs/network/bench_network.json")
    parser.add_argument("--hierarchical", default="docs/network/hierarchical.json",
                        help="bench_network.py --ranks-per-host 2's JSON ('' to leave out)")
    parser.add_argument("--out", default="docs/costmodel/validation.md")
    parser.add_argument("--constants", help="also write the fitted constants here (JSON, whatif.py --codec reads it)")
    args = parser.parse_args(argv)
    for path in filter(None, (args.json, args.hierarchical)):
        if not _found(path).is_file():
            parser.error(f"{path!r} does not exist (expected bench_network.py --json output)")
    from whatif import model_shapes

    rows = json.loads(_found(args.json).read_text())
    shapes = {m: model_shapes("digitsnet" if m == "tiny" else m) for m in sorted({r["model"] for r in rows})}
    flat = cells(rows)
    try:
        cal, subset, cell = fit(flat, shapes)
    except ValueError as error:
        parser.error(f"--json {args.json!r}: {error}")
    source = f"{cell[0]}-worker {cell[1]} dense at {cell[2]}" if cell else "no shaped dense cell: 1 assumed"
    lines = [f"Calibrated on the recorded runs of `{args.json}`; no new timing. Command: "
             f"`.venv/bin/python scripts/validate_costmodel.py {' '.join(argv if argv is not None else sys.argv[1:])}`"
             .rstrip() + ".", "",
             f"Constants: unshaped veth link {cal.unshaped / 1e6:.0f} MB/s effective, per-collective cost "
             f"{cal.latency * 1e3:.2f} ms, codec scale {cal.codec_scale:.2f} x bench_compression.py's figures "
             f"(dgc.costmodel.CPU_SCALE, the default constants' scale: {CPU_SCALE}) "
             f"(fitted on the {len(subset)} 2-worker unshaped and 1 Gbit/s cells), tbf efficiency "
             f"{cal.efficiency:.3f} of the tc rate (from {source}), tbf burst 256 KB; "
             "compute: each (N, model)'s compute-only cell.", ""]
    body, errors, predicted = table(flat, shapes, cal, subset, f"Flat exchange ({args.json})", cell)
    lines += ["#### Measured / predicted seconds per step (error); \u2020: a cell the constants were fitted on", ""]
    lines += pivot(errors, predicted) + [""] + body
    two = [e for e in errors if e[0][0] == 2]
    held = [e for e in two if not e[2]]
    results = [summary(two, "2 workers, all cells"), summary(held, "2 workers, held out (neither fitted nor "
                                                                      "the efficiency cell)"),
               summary([e for e in errors if e[0][0] == 4], "4 workers (4 processes on 2 cores)")]
    if args.hierarchical:
        hier_rows = json.loads(_found(args.hierarchical).read_text())
        limits = limits_by(hier_rows)
        for r in hier_rows:
            if "limit" not in r["cells"]:
                r["cells"]["limit"] = {"seconds": limits[(r["workers"], r["model"])]}
        body, hier_errors, _ = table(cells(hier_rows), shapes, cal, [], f"{hier_rows[0]['workers']} ranks, 2 per "
                                     f"host ({args.hierarchical}; local link: the unshaped constants)")
        lines += body
        results.append(summary(hier_errors, "2 hosts x 2 ranks (4 processes on 2 cores)"))
    lines += results
    text = "\n".join(lines) + "\n"
    print(text)
    out = pathlib.Path(args.out) if pathlib.Path(args.out).is_absolute() else ROOT / args.out
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    if args.constants:
        pathlib.Path(args.constants).write_text(json.dumps(
            {f: getattr(cal.constants, f) for f in cal.constants.__dataclass_fields__}, indent=1) + "\n")
    return 0


def _found(path):
    """``path`` as given, or under the checkout when it is relative and not found from here."""
    given = pathlib.Path(path)
    return given if given.is_absolute() or given.exists() else ROOT / given


if __name__ == "__main__":
    sys.exit(main())
