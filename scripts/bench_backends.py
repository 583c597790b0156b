"""The same model and DGC config through Horovod (dgc.horovod.DistributedOptimizer) and through DDP's
communication hook (dgc.torch), and each backend's own dense allreduce for context: seconds per step in one
run, and the DDP / Horovod ratio (goal: the DDP path within 1.2x of the Horovod path).

Usage:
  .venv/bin/python scripts/bench_backends.py [--workers 2] [--model resnet20] [--steps 10] [--batch 128]

DGC is configs/dgc/compact.py's wire format (ratio 0.001, fp16 values, 16-bit block-offset indices, dense
tensors in fp16, momentum correction) through the fused exchange, on one machine (loopback), one torch
thread per worker, a fixed random batch; median seconds per step after two warm-up steps.
"""
import argparse
import json
import os
import pathlib
import statistics
import subprocess
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
BIN = pathlib.Path(sys.executable).parent
BACKENDS, METHODS = ("horovod", "torch"), ("dense", "dgc")


def worker(args):
    """One rank of one backend: for each method in turn (a fresh model, the same seed), time ``steps`` steps;
    rank 0 prints each method's seconds per step as a JSON line (one job per backend: half the launches)."""
    import torch

    torch.set_num_threads(1)
    if args.backend == "horovod":
        import horovod.torch as hvd
        hvd.init()
        rank = hvd.rank()
    else:
        import torch.distributed as dist
        import dgc.torch as dgc_torch
        dist.init_process_group("gloo")
        rank = dist.get_rank()
    for method in METHODS:
        seconds = timed(args, method, rank)
        if rank == 0:
            print(json.dumps({"method": method, "seconds": seconds}), flush=True)
    if args.backend == "torch":
        dgc_torch.close_process_group()


def timed(args, method, rank):
    """Median seconds per step of ``method`` on ``args.backend`` (initialised), after 2 warm-up steps."""
    import torch

    from dgc.compressors.dgc import DGCCompressor
    from dgc.compressors.fp16 import FP16Compressor
    from dgc.fused import FusedCommunicator
    from dgc.memory import DGCSGDMemory
    from models import resnet20, vgg16

    backend = args.backend
    if backend == "horovod":
        import horovod.torch as hvd
        import dgc.horovod as dgc_hvd
    else:
        from torch.nn.parallel import DistributedDataParallel
        import dgc.torch as dgc_torch
    torch.manual_seed(0)
    model = {"resnet20": resnet20, "vgg16": vgg16}[args.model]()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
    make = dict(compression=DGCCompressor(0.001, fp16_values=True, compact_indices=True, min_compress_numel=256),
                memory=DGCSGDMemory(gradient_clipping=5.0), dense_compression=FP16Compressor())
    net, step = model, optimizer.step
    if backend == "horovod":
        if method == "dense":
            optimizer = hvd.DistributedOptimizer(optimizer, named_parameters=model.named_parameters())
        else:
            optimizer = dgc_hvd.DistributedOptimizer(optimizer, named_parameters=model.named_parameters(),
                                                     communicator=FusedCommunicator(dgc_hvd.HorovodCommunicator()),
                                                     **make)
        step = optimizer.step
    else:
        net = DistributedDataParallel(model)
        if method == "dgc":
            hook = dgc_torch.DGCHook(net, optimizer, communicator=FusedCommunicator(dgc_torch.TorchCommunicator()),
                                     **make)
            net.register_comm_hook(hook, dgc_torch.dgc_hook)
            step = lambda: hook.step(optimizer)     # noqa: E731
    gen = torch.Generator().manual_seed(rank)
    x, y = torch.randn(args.batch, 3, 32, 32, generator=gen), torch.randint(10, (args.batch,), generator=gen)
    times = []
    for _ in range(2 + args.steps):
        started = time.perf_counter()
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(net(x), y).backward()
        step()
        times.append(time.perf_counter() - started)
    return statistics.median(times[2:])


def launch(backend, args):
    """Run one backend's job; return {method: seconds per step}."""
    argv = [str(pathlib.Path(__file__).resolve()), "--worker", "--backend", backend,
            "--model", args.model, "--steps", str(args.steps), "--batch", str(args.batch)]
    if backend == "horovod":
        cmd = [str(BIN / "horovodrun"), "-np", str(args.workers), "-H", f"localhost:{args.workers}", "--gloo",
               sys.executable, *argv]
    else:
        cmd = [str(BIN / "torchrun"), "--standalone", "--nproc-per-node", str(args.workers), *argv]
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    out = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=1800)
    if out.returncode != 0:
        raise RuntimeError(f"bench_backends.py: {backend} failed:\n{out.stdout[-2000:]}\n{out.stderr[-3000:]}")
    rows = [json.loads(line[line.index("{"):]) for line in out.stdout.splitlines() if '"seconds"' in line]
    return {row["method"]: row["seconds"] for row in rows}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--model", choices=("resnet20", "vgg16"), default="resnet20")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--backend", choices=("horovod", "torch"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    for name in ("workers", "steps", "batch"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} {getattr(args, name)} must be >= 1")
    if args.worker:
        worker(args)
        return 0
    print(f"# bench_backends.py {' '.join(sys.argv[1:] if argv is None else argv)}; {os.cpu_count()} CPUs; "
          f"{args.workers} workers on this machine; median s/step over {args.steps} steps after 2 warm-up steps")
    seconds = {backend: launch(backend, args) for backend in BACKENDS}
    print("\n| method | Horovod s/step | DDP s/step | DDP / Horovod |")
    print("| :--- | ---: | ---: | ---: |")
    for method in METHODS:
        h, t = seconds["horovod"][method], seconds["torch"][method]
        label = "dense allreduce (each backend's own)" if method == "dense" else "DGC compact, fused (dgc exchange)"
        print(f"| {label} | {h:.3f} | {t:.3f} | {t / h:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
