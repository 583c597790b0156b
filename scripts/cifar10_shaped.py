"""Time to accuracy over shaped links: CIFAR-10 ResNet-20 (or another configs/cifar/ model, --model) trained
by train.py with 2 workers in their own network namespaces (scripts/bench_network.py's topology), each link
limited to a rate, for dense fp32 (Horovod's own), fp16 allreduce and DGC; then scripts/compare.py's table
per rate and the wall-time factors to the target accuracy.

Usage (root):
  .venv/bin/python scripts/cifar10_shaped.py [--rates 10mbit] [--epochs 3] [--fraction 1.0] [--target 50]
      [--methods dense,fp16,dgc] [--model resnet20] [--test-fraction 1.0] [--out runs/cifar10-shaped]

DGC here is configs/dgc/ with the compact wire format (configs/dgc/compact.py) through the fused exchange,
at 0.1% from the first step (no warm-up: the schedule is short); dgc_wm1 adds a one-epoch warm-up of the kept
ratio (3.16% falling per step to 0.1%, then 0.1%). Every run has a 1-epoch lr warm-up, then
cosine decay (as scripts/cifar10_compressors.sh), one torch thread per worker
and no error measurement (train.measure_error_every=0), so wall time is compute plus exchange. A run
directory with a checkpoint resumes; logs (OUT/<rate>/<method>.log) are appended to.
"""
import argparse
import json
import os
import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
import bench_network  # noqa: E402
import compare  # noqa: E402

METHODS = {
    "dense": [],
    "fp16": ["configs/compression/fp16.py"],
    "dgc": ["configs/dgc/__init__.py", "configs/dgc/compact.py", "train.fuse_exchange=True"],
    "dgc_wm1": ["configs/dgc/__init__.py", "configs/dgc/compact.py", "train.fuse_exchange=True",
                "train.compression.warmup_epochs=1", "train.compression_warmup_per_step=True"],
}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rates", default="10mbit")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--fraction", type=float, default=1.0, help="data.train_fraction")
    parser.add_argument("--test-fraction", type=float, default=1.0, help="data.test_fraction")
    parser.add_argument("--model", default="resnet20", help="a config of configs/cifar/ (e.g. vgg16)")
    parser.add_argument("--target", type=float, default=50.0, help="test top-1 (percent) to time")
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--out", default="runs/cifar10-shaped")
    parser.add_argument("--timeout", type=float, default=7200, help="seconds one run may take")
    args = parser.parse_args(argv)
    methods = args.methods.split(",")
    bad = [m for m in methods if m not in METHODS]
    if bad:
        parser.error(f"unknown method {bad[0]!r}; expected one of {', '.join(METHODS)}")
    if not (ROOT / "configs" / "cifar" / f"{args.model}.py").is_file():
        parser.error(f"--model {args.model!r}: no configs/cifar/{args.model}.py")
    if os.geteuid() != 0:
        print("cifar10_shaped.py: error: needs root (network namespaces, veth links, tc)", file=sys.stderr)
        return 2
    bench_network.sh("bash", str(ROOT / "scripts" / "get_cifar10.sh"))
    for rate in args.rates.split(","):
        out = ROOT / args.out / rate
        out.mkdir(parents=True, exist_ok=True)
        with bench_network.Topology(2) as topology:
            topology.shape(rate)
            for method in methods:
                configs = [c for c in METHODS[method] if c.endswith(".py")]
                overrides = [c for c in METHODS[method] if not c.endswith(".py")]
                argv = [str(ROOT / "train.py"), "--configs", f"configs/cifar/{args.model}.py", *configs,
                        f"train.num_epochs={args.epochs}", f"data.train_fraction={args.fraction}",
                        f"data.test_fraction={args.test_fraction}",
                        "train.scheduler.warmup_epochs=1", "train.num_threads=1", "train.measure_error_every=0",
                        f"train.target_accuracy={args.target}",
                        *overrides, "--run-dir", str(out / method)]
                print(f"[shaped] {rate} {method}", flush=True)
                with open(out / f"{method}.log", "a") as log:
                    bench_network.launch(topology, 1, argv, args.timeout, log=log)
        runs = [compare.load_run(str(out / m)) for m in methods]
        table = compare.render_table(runs, args.target)
        (out / "table.md").write_text(table + "\n")
        print(f"\n### {rate}\n\n{table}\n")
        times = {m: compare.epochs_to_target(r["history"], args.target)[1] for m, r in zip(methods, runs)}
        for dgc in (m for m in methods if m.startswith("dgc")):
            for other in ("dense", "fp16"):
                if other not in times:
                    continue
                if times[dgc] and times[other]:
                    print(f"{rate}: time to {args.target:g}%: {other} / {dgc} = {times[other] / times[dgc]:.2f}")
                else:
                    print(f"{rate}: time to {args.target:g}%: {other} {times[other]}, {dgc} {times[dgc]} "
                          "(None: not reached)")
        (out / "times.json").write_text(json.dumps(times))
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    finally:
        if os.geteuid() == 0:
            bench_network.teardown()
