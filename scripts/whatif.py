"""Will compression make my training faster? The cost model's (dgc/costmodel.py) predicted seconds per step of
each exchange method on a cluster you describe, its speed-up over dense, the N where DGC's allgather stops
paying, the warm-up epochs where DGC is slower than dense, and a plot of step time against N.

    .venv/bin/python scripts/whatif.py --model resnet50 --workers 8,64,256,1024 --link 10gbit --latency 20us \\
        --compute-ms 180 --methods dense,fp16,powersgd,dgc,dgc_hier [--plot FILE]

``--model``: a model of models/ (resnet20 ... resnet110, vgg16, digitsnet: the CIFAR ones), any torchvision
classification model by name (resnet50; ``torchvision:vgg16`` for ImageNet's VGG-16), or a config file whose
``model`` is built (configs/imagenet/resnet50.py); its parameter shapes are read on the meta device (no
memory). ``--compute-ms`` or ``--compute-from RUN_DIR`` (a short train.py run's step time). Predictions of a
model validated only at N <= 4 on CPUs (docs/costmodel/validation.md): read them as what the alpha-beta
model says, not as measurements.
"""
import argparse
import json
import pathlib
import sys
import time
from dataclasses import replace

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from dgc.costmodel import (METHODS, PAPER_WARMUP, Constants, Link, Method,  # noqa: E402
                           crossover_workers, parse_latency, parse_rate, predict, slower_than_dense_from,
                           warmup_predictions)

LABELS = {"dense": "dense fp32", "fp16": "fp16", "powersgd": "PowerSGD r{rank}", "dgc": "DGC {ratio:g}",
          "dgc_hier": "DGC hier. {ratio:g}"}
CIFAR = ("resnet20", "resnet32", "resnet44", "resnet56", "resnet110", "vgg16", "digitsnet")


def model_shapes(model):
    """Parameter shapes (trained ones, model order) of ``model``: a name (models/ or torchvision) or a config
    file path; built on the meta device, so no memory is allocated."""
    import torch

    with torch.device("meta"):
        if model.endswith(".py"):
            from training.config import ConfigError, load_configs
            path = pathlib.Path(model)
            try:
                net = load_configs([str(path)], root=ROOT / "configs").model()
            except ConfigError as error:
                raise ValueError(str(error)) from None
        elif model.startswith("torchvision:"):      # e.g. torchvision:vgg16, the ImageNet model
            from models import torchvision_model
            net = torchvision_model(model.partition(":")[2])
        elif model in CIFAR:
            import models
            net = models.DigitsNet() if model == "digitsnet" else getattr(models, model)()
        else:
            from models import torchvision_model
            net = torchvision_model(model)
    return [tuple(p.shape) for p in net.parameters() if p.requires_grad]


def run_step_seconds(run_dir, batch):
    """Seconds per training step of a train.py run: num_workers x ``batch`` images over its images/s (the mean
    over its epochs after the first, which includes start-up, when there are several)."""
    path = pathlib.Path(run_dir) / "metrics.json"
    if batch < 1:
        raise ValueError(f"--batch {batch} must be >= 1")
    if not path.is_file():
        raise ValueError(f"{str(path)!r} does not exist (expected a train.py run directory)")
    metrics = json.loads(path.read_text())
    rates = [h["images_per_s"] for h in metrics.get("history", []) if h.get("images_per_s")]
    if not rates:
        raise ValueError(f"{str(path)!r} has no epoch with images_per_s")
    rates = rates[1:] or rates
    return metrics.get("num_workers", 1) * batch / (sum(rates) / len(rates))


def _type(parse, what):
    def convert(text):
        try:
            return parse(text)
        except ValueError as error:
            raise argparse.ArgumentTypeError(f"{what}: {error}") from None
    return convert


def _workers(text):
    counts = []
    for item in text.split(","):
        try:
            n = int(item)
        except ValueError:
            n = 0
        if n < 1:
            raise ValueError(f"{item!r} in {text!r} is not a worker count (an int >= 1)")
        counts.append(n)
    return counts


def _methods(text):
    names = text.split(",")
    for name in names:
        if name not in METHODS:
            raise ValueError(f"{name!r} is not a method; expected some of {','.join(METHODS)}")
    return names


def _positive(text):
    value = float(text)
    if not value > 0:
        raise ValueError(f"{text!r} must be > 0")
    return value


def _ratio(text):
    value = float(text)
    if not 0 < value <= 1:
        raise ValueError(f"{text!r} is outside (0, 1] (the fraction of values DGC keeps)")
    return value


def _constants(text):
    if text == "gpu":
        return Constants.assumed_gpu()
    if text == "cpu":
        return Constants()
    if not pathlib.Path(text).is_file():
        raise ValueError(f"{text!r} is neither gpu, cpu nor a JSON file of dgc.costmodel.Constants fields")
    return Constants.from_file(text)


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="resnet50",
                        help="models/ or torchvision name (torchvision:vgg16), or a config .py file")
    parser.add_argument("--workers", type=_type(_workers, "--workers"), default=[8, 64, 256, 1024],
                        help="comma-separated worker counts (default 8,64,256,1024)")
    parser.add_argument("--link", type=_type(parse_rate, "--link"), default=parse_rate("10gbit"),
                        help="link rate each way per worker, tc spelling (10gbit, 25gbit, 100mbit)")
    parser.add_argument("--latency", type=_type(parse_latency, "--latency"), default=20e-6,
                        help="fixed cost of one collective (20us, 1ms)")
    parser.add_argument("--efficiency", type=_type(_positive, "--efficiency"), default=1.0,
                        help="fraction of the link rate collectives achieve (default 1: the rate as given)")
    compute = parser.add_mutually_exclusive_group(required=True)
    compute.add_argument("--compute-ms", type=_type(_positive, "--compute-ms"),
                         help="forward + backward milliseconds of one step without any exchange")
    compute.add_argument("--compute-from", metavar="RUN_DIR",
                         help="take the step time of a short train.py run (best run: 1 worker, so no exchange): "
                         "its metrics.json's images/s and --batch")
    parser.add_argument("--batch", type=int, default=128, help="with --compute-from: images per worker and step")
    parser.add_argument("--methods", type=_type(_methods, "--methods"), default=list(METHODS))
    parser.add_argument("--ratio", type=_type(_ratio, "--ratio"), default=0.001, help="DGC's kept ratio")
    parser.add_argument("--wire", choices=("compact", "int32", "int64"), default="compact",
                        help="DGC's wire format: compact (configs/dgc/compact.py: fp16 values, 16-bit indices, "
                        "fp16 dense tensors, weights of 256+ elements sparsified), int32 (fp16 values, int32 "
                        "indices), int64 (fp32 values, int64 indices, the reference code's)")
    parser.add_argument("--unfused", action="store_true", help="DGC with one collective per tensor")
    parser.add_argument("--no-switch", action="store_true", help="DGC without the sparse/dense switch")
    parser.add_argument("--rank", type=int, default=4, help="PowerSGD's rank")
    parser.add_argument("--ranks-per-host", type=int, default=8, help="dgc_hier: ranks per host")
    parser.add_argument("--local-link", type=_type(parse_rate, "--local-link"), default=parse_rate("1200gbit"),
                        help="dgc_hier: the link within a host (default 1200gbit, NVLink-class 150 GB/s)")
    parser.add_argument("--local-latency", type=_type(parse_latency, "--local-latency"), default=10e-6)
    parser.add_argument("--codec", type=_type(_constants, "--codec"), default=Constants.assumed_gpu(),
                        help="codec constants: gpu (assumed, default), cpu (this project's CPU) or a JSON file")
    parser.add_argument("--plot", help="write step time against N here (default runs/whatif/<model>.png)")
    args = parser.parse_args(argv)
    if args.compute_from is not None:
        try:
            args.compute_ms = 1e3 * run_step_seconds(args.compute_from, args.batch)
        except ValueError as error:
            parser.error(f"--compute-from {args.compute_from!r}: {error}")
    if args.rank < 1:
        parser.error(f"--rank {args.rank} must be >= 1")
    if args.ranks_per_host < 1:
        parser.error(f"--ranks-per-host {args.ranks_per_host} must be >= 1")
    if "dgc_hier" in args.methods:
        bad = [n for n in args.workers if n % args.ranks_per_host]
        if bad:
            parser.error(f"--workers {bad[0]} is not a multiple of --ranks-per-host {args.ranks_per_host} "
                         "(dgc_hier needs whole hosts)")
    return args


def methods_of(args):
    """The Method of each name, with the wire format and options given."""
    wire = {"compact": dict(value_bytes=2, index_bytes=2, dense_bytes=2, min_compress_numel=256),
            "int32": dict(value_bytes=2, index_bytes=4), "int64": dict()}[args.wire]
    dgc = dict(wire, ratio=args.ratio, fused=not args.unfused, switch=not args.no_switch)
    return {"dense": Method("dense"), "fp16": Method("fp16"), "powersgd": Method("powersgd", rank=args.rank),
            "dgc": Method("dgc", **dgc), "dgc_hier": Method("dgc_hier", ranks_per_host=args.ranks_per_host, **dgc)}


def main(argv=None):
    started = time.perf_counter()
    args = parse_args(argv)
    try:
        shapes = model_shapes(args.model)
    except (ValueError, AttributeError) as error:
        print(f"whatif.py: error: --model {args.model!r}: {error}", file=sys.stderr)
        return 2
    methods = methods_of(args)
    link = Link(args.link * args.efficiency, args.latency)
    local = Link(args.local_link, args.local_latency)
    compute = args.compute_ms / 1e3
    label = {m: LABELS[m].format(rank=args.rank, ratio=args.ratio) for m in args.methods}
    print(f"# whatif.py: {args.model} ({len(shapes)} tensors, {sum(_numel(s) for s in shapes) / 1e6:.1f}M "
          f"parameters); link {args.link * 8 / 1e9:g} Gbit/s x {args.efficiency:g} each way, {args.latency * 1e6:g} us "
          f"per collective; compute {args.compute_ms:g} ms; DGC ratio {args.ratio:g}, {args.wire} wire, "
          f"{'unfused' if args.unfused else 'fused'}, switch {'off' if args.no_switch else 'on'}; dgc_hier "
          f"{args.ranks_per_host} ranks per host over {args.local_link * 8 / 1e9:g} Gbit/s")
    print("# predictions of a model validated only at N <= 4 on CPUs (docs/costmodel/validation.md)\n")
    table = {m: [predict(shapes, methods[m], n, link, compute, local, args.codec) for n in args.workers]
             for m in args.methods}
    print("| N | " + " | ".join(f"{label[m]} s/step" for m in args.methods)
          + "".join(f" | {label[m]} / dense" for m in args.methods if m != "dense") + " |")
    print("| ---: |" + " ---: |" * (len(args.methods) + len([m for m in args.methods if m != "dense"])))
    dense = [predict(shapes, methods["dense"], n, link, compute, local, args.codec).seconds for n in args.workers]
    for j, n in enumerate(args.workers):
        cells = [f"{table[m][j].seconds:.4f}" for m in args.methods]
        speedups = [f"{dense[j] / table[m][j].seconds:.2f}x" for m in args.methods if m != "dense"]
        print(f"| {n} | " + " | ".join(cells + speedups) + " |")
    dgc = methods["dgc"]
    print("\nDGC's allgather stops paying (each worker sends more bytes than in a dense fp32 allreduce; "
          "switch off):")
    for ratio in sorted(set(PAPER_WARMUP + (args.ratio,)), reverse=True):
        n = crossover_workers(shapes, replace(dgc, ratio=ratio))
        print(f"  ratio {ratio:g}: from N = {n}" if n is not None else f"  ratio {ratio:g}: not up to 2^24 workers")
    for m in [m for m in ("dgc", "dgc_hier") if m in args.methods]:
        n = slower_than_dense_from(shapes, methods[m], link, compute, local, args.codec)
        print(f"{label[m]} as configured: predicted slower than dense fp32 "
              + (f"from N = {n}" if n is not None else "at no N up to 2^20") + " on this link and compute")
    print("\nWarm-up (configs/dgc/paper_warmup.py): DGC s/step per epoch; * slower than dense")
    print("| N | dense | " + " | ".join(f"epoch {e} ({r:g})" for e, r in
                                        enumerate([max(r, args.ratio) for r in PAPER_WARMUP]))
          + f" | epoch 4+ ({args.ratio:g}) | slower epochs |")
    print("| ---: | ---: |" + " ---: |" * (len(PAPER_WARMUP) + 1) + " :--- |")
    for j, n in enumerate(args.workers):
        epochs = warmup_predictions(shapes, dgc, n, link, compute, constants=args.codec)
        slower = [e for e, _, p in epochs if p.seconds > dense[j]]
        cells = [f"{p.seconds:.4f}{'*' if p.seconds > dense[j] else ''}" for _, _, p in epochs]
        print(f"| {n} | {dense[j]:.4f} | " + " | ".join(cells) + f" | {', '.join(map(str, slower)) or 'none'} |")
    stem = pathlib.Path(args.model.replace(":", "_")).stem
    path = pathlib.Path(args.plot) if args.plot else ROOT / "runs" / "whatif" / f"{stem}.png"
    plot(args, table, label, compute, path)
    print(f"\nplot: {path}; {time.perf_counter() - started:.1f} s")
    return 0


def plot(args, table, label, compute, path):
    """Seconds per step against N (log-log), one line per method, the compute alone dashed."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for m in args.methods:
        ax.plot(args.workers, [p.seconds for p in table[m]], "o-", label=label[m])
    ax.axhline(compute, color="k", linestyle="--", label="compute only")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("workers N")
    ax.set_ylabel("predicted seconds per step")
    ax.set_title(f"{args.model}, {args.link * 8 / 1e9:g} Gbit/s, {args.latency * 1e6:g} us (model)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _numel(shape):
    count = 1
    for d in shape:
        count *= d
    return count


if __name__ == "__main__":
    sys.exit(main())
