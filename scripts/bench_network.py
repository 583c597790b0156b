"""Training speed over shaped links: N Horovod workers in their own network namespaces, joined by veth links
to a bridge, each link shaped to a rate with tc (tbf), as if on N hosts; seconds per step of each exchange
method against the compute-only limit, in one run.

Usage (root: namespaces, veth and tc need it):
  .venv/bin/python scripts/bench_network.py [--workers 2,4] [--rates 10mbit,100mbit,1gbit,none]
      [--models resnet20,vgg16] [--methods limit,dense,fp16,powersgd,dgc,dgc_fused,dgc_hier,ddp_dgc,ddp_dgc_sync,
                                          dgc_warmup,dgc_warmup_switch,auto]
      [--ranks-per-host R] [--steps MODEL=N,...]

Workers start exactly as on separate hosts (Gloo, a rendezvous server in the root namespace, no ssh); each
gets its own UTS namespace whose hostname is its address, because Horovod 0.28's Gloo context resolves
gethostname() (127.0.0.1 here) instead of honouring HOROVOD_GLOO_IFACE. Namespaces, links and worker
processes are always removed: on success, on failure and on Ctrl-C (also left-overs of a killed run, at
start). tbf limits the rate only: netem (delay) is not available on this kernel, so latency is not added;
the table counts collectives per step so the cost of a given per-collective latency can be worked out.

ddp_dgc / ddp_dgc_sync: dgc_fused's format through DDP's communication hook (torch.distributed Gloo over the
same links, rendezvous at rank 0's address, buckets of at most 1 MB), with the overlapping hook (each bucket's
exchange leaves while the backward pass computes the next) and with the synchronous one (``overlap=False``).

dgc_warmup / dgc_warmup_switch: the first epoch of configs/dgc/paper_warmup.py (ratio 25%, its fp32 values and
int64 indices: 12-byte pairs, one collective per tensor), with the sparse/dense switch off (always the allgather
of pairs) and on (a selection goes as a dense fp32 allreduce where that moves fewer bytes: from 3 workers on at
25%). Their cells also give the bytes each worker sends per step on the wire by the ring algorithms
(dgc.costmodel), counted per collective, as dense's: an allgather's payload counts N - 1 times. The other dgc
methods keep the switch on too; at 0.1% it never triggers (below roughly N = 1,000), so they are unchanged.

auto: train.py's compression=auto (training/auto.py) in the cell: its calibration (forward + backward timed,
the link measured by dense allreduces, untimed here) picks dense, fp16 or dgc_fused's setup, whose steps are
then timed; a table sets its seconds per step and choice beside the best fixed method's of those three.
"""
import argparse
import json
import os
import pathlib
import shutil
import signal
import statistics
import subprocess
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

PREFIX = "dgcnet"
SUBNET = "10.77.0"
BRIDGE_IP = f"{SUBNET}.1"
IFACE = "dgceth"                      # each worker namespace's link, the same name in every namespace
METHODS = ("limit", "dense", "fp16", "powersgd", "dgc", "dgc_fused", "dgc_hier", "ddp_dgc", "ddp_dgc_sync",
           "dgc_warmup", "dgc_warmup_switch", "auto")
LABELS = {"limit": "compute only", "dense": "dense fp32 (Horovod)", "fp16": "fp16 (Horovod)",
          "powersgd": "PowerSGD r4", "dgc": "DGC 0.001", "dgc_fused": "DGC 0.001 fused+compact",
          "dgc_hier": "DGC hierarchical", "ddp_dgc": "DGC fused, DDP hook", "ddp_dgc_sync": "DGC fused, DDP hook sync",
          "dgc_warmup": "DGC 25% warm-up, pairs", "dgc_warmup_switch": "DGC 25% warm-up, switch",
          "auto": "auto (its choice)"}
"""dgc_hier: dgc_fused's format, averaged densely within a host, compressed between hosts at 0.001 x ranks per
host (the flat exchange's update density; configs/dgc/hierarchical.py)."""
AUTO_METHODS = {"dense": "dense", "fp16": "fp16", "dgc": "dgc_fused"}
"""auto: the method of this script that trains each of compression=auto's candidates (training/auto.py)."""
DEFAULT_STEPS = {"tiny": 3, "resnet20": 8, "vgg16": 3}
"""Timed steps per cell (after one warm-up step): dense VGG-16 at 10 Mbit/s takes about 50 s a step."""


def sh(*args, check=True):
    return subprocess.run(args, check=check, capture_output=True, text=True)


def namespaces():
    """Our namespaces that exist now (also a killed run's)."""
    listed = sh("ip", "netns", "list", check=False).stdout.split()
    return sorted(name for name in listed if name.startswith(PREFIX))


def links():
    """Our links in the root namespace that exist now."""
    out = sh("ip", "-o", "link", "show", check=False).stdout
    return sorted(line.split(":")[1].strip().split("@")[0] for line in out.splitlines()
                  if line.split(":")[1].strip().startswith(PREFIX))


def teardown():
    """Kill every process in our namespaces, delete the namespaces (their veth ends go with them) and the
    bridge and veths in the root namespace. Safe to call at any time, any number of times."""
    for ns in namespaces():
        for pid in sh("ip", "netns", "pids", ns, check=False).stdout.split():
            try:
                os.kill(int(pid), signal.SIGKILL)
            except ProcessLookupError:
                pass
        sh("ip", "netns", "del", ns, check=False)
    for link in links():
        sh("ip", "link", "del", link, check=False)


class Topology:
    """``hosts`` namespaces ``dgcnet0..`` with addresses 10.77.0.10.., each linked by a veth pair to the bridge
    ``dgcnetbr`` (10.77.0.1, where the rendezvous server listens). :meth:`shape` sets every link's rate."""

    def __init__(self, hosts):
        self.hosts = hosts
        self.addresses = [f"{SUBNET}.{10 + i}" for i in range(hosts)]

    def __enter__(self):
        teardown()
        try:
            bridge = f"{PREFIX}br"
            sh("ip", "link", "add", bridge, "type", "bridge")
            sh("ip", "addr", "add", f"{BRIDGE_IP}/24", "dev", bridge)
            sh("ip", "link", "set", bridge, "up")
            for i, address in enumerate(self.addresses):
                ns, outer, inner = f"{PREFIX}{i}", f"{PREFIX}v{i}", f"{PREFIX}p{i}"
                sh("ip", "netns", "add", ns)
                sh("ip", "link", "add", outer, "type", "veth", "peer", "name", inner)
                sh("ip", "link", "set", inner, "netns", ns)
                sh("ip", "link", "set", outer, "master", bridge, "up")
                sh("ip", "-n", ns, "link", "set", inner, "name", IFACE)
                sh("ip", "-n", ns, "addr", "add", f"{address}/24", "dev", IFACE)
                sh("ip", "-n", ns, "link", "set", IFACE, "up")
                sh("ip", "-n", ns, "link", "set", "lo", "up")
        except BaseException:
            teardown()
            raise
        return self

    def __exit__(self, *exc):
        teardown()

    def shape(self, rate):
        """Limit both directions of every worker's link to ``rate`` (tc syntax, e.g. 100mbit), or remove the
        limit (``none``)."""
        for i in range(self.hosts):
            for ns, dev in ((None, f"{PREFIX}v{i}"), (f"{PREFIX}{i}", IFACE)):
                prefix = ("ip", "netns", "exec", ns) if ns else ()
                if rate == "none":
                    sh(*prefix, "tc", "qdisc", "del", "dev", dev, "root", check=False)
                else:
                    sh(*prefix, "tc", "qdisc", "replace", "dev", dev, "root", "tbf", "rate", rate,
                       "burst", "256kb", "latency", "50ms")


def launch(topology, ranks_per_host, argv, timeout, log=None):
    """Run ``python argv...`` on every slot (``ranks_per_host`` per namespace) as Horovod would on separate
    hosts; return rank 0's stdout (every rank's output also goes to ``log``, a file, when given). Any failure
    or timeout kills every worker."""
    from horovod.runner.common.util.hosts import get_host_assignments, parse_hosts
    from horovod.runner.gloo_run import create_run_env_vars, create_slot_env_vars
    from horovod.runner.http.http_server import RendezvousServer

    size = topology.hosts * ranks_per_host
    server = RendezvousServer()
    port = server.start()
    plan = get_host_assignments(parse_hosts(",".join(f"{a}:{ranks_per_host}" for a in topology.addresses)), size)
    server.init(plan)
    procs = []
    try:
        for slot in plan:
            env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1",
                       **{k: str(v) for k, v in create_run_env_vars(BRIDGE_IP, [IFACE], port).items()},
                       **create_slot_env_vars(slot))
            ns = f"{PREFIX}{topology.addresses.index(slot.hostname)}"
            command = ["ip", "netns", "exec", ns, "unshare", "--uts", "sh", "-c",
                       f'hostname {slot.hostname} && exec "$@"', "sh", sys.executable, *argv]
            procs.append(subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                          text=True, start_new_session=True, cwd=ROOT))
        deadline = time.monotonic() + timeout
        outputs = []
        for proc in procs:
            try:
                outputs.append(proc.communicate(timeout=max(1.0, deadline - time.monotonic())))
            except subprocess.TimeoutExpired:
                raise RuntimeError(f"bench_network.py: a worker ran past {timeout} s ({argv})")
            if log is not None:
                log.write("".join(outputs[-1]))
            if proc.returncode != 0:
                raise RuntimeError(f"bench_network.py: worker failed ({argv}):\n{outputs[-1][1][-3000:]}")
        return outputs[0][0]
    finally:
        for proc in procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        server.stop()


class WireCount:
    """A communicator wrapper that counts the bytes this worker sends on the wire, per collective, by the ring
    algorithms (:mod:`dgc.costmodel`): an allgather's row to N - 1 workers, 2 (N - 1) / N of an allreduce."""

    def __init__(self, inner):
        self.inner, self.bytes = inner, 0.0

    @property
    def size(self):
        return self.inner.size

    @property
    def rank(self):
        return self.inner.rank

    def start(self, payload, name):
        from dgc.costmodel import ring_allgather_bytes, ring_allreduce_bytes
        count = ring_allgather_bytes if payload.collective == "allgather" else ring_allreduce_bytes
        self.bytes += count(self.size, payload.tensor.numel() * payload.tensor.element_size())
        return self.inner.start(payload, name)

    def wait(self, handle):
        return self.inner.wait(handle)


def build_model(name):
    import torch

    from models import DigitsNet, resnet20, vgg16
    torch.manual_seed(0)
    if name == "tiny":
        return DigitsNet(), (1, 8, 8)
    return {"resnet20": resnet20, "vgg16": vgg16}[name](), (3, 32, 32)


def ddp_worker(args):
    """One rank of ``ddp_dgc``/``ddp_dgc_sync``: as :func:`worker`, through DDP's hook (torch.distributed, Gloo)."""
    import torch
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    import dgc.torch as dgc_torch
    from dgc.compressors.dgc import DGCCompressor
    from dgc.compressors.fp16 import FP16Compressor
    from dgc.fused import FusedCommunicator
    from dgc.memory import DGCSGDMemory

    torch.set_num_threads(1)
    os.environ["GLOO_SOCKET_IFNAME"] = IFACE
    rank, size = int(os.environ["HOROVOD_RANK"]), int(os.environ["HOROVOD_SIZE"])
    dist.init_process_group("gloo", init_method=f"tcp://{args['master']}", rank=rank, world_size=size)
    model, shape = build_model(args["model"])
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
    net = DistributedDataParallel(model, bucket_cap_mb=1)
    hook = dgc_torch.DGCHook(net, optimizer, overlap=args["method"] == "ddp_dgc",
                             compression=DGCCompressor(0.001, fp16_values=True, compact_indices=True,
                                                       min_compress_numel=256),
                             memory=DGCSGDMemory(gradient_clipping=5.0), dense_compression=FP16Compressor(),
                             communicator=FusedCommunicator(dgc_torch.TorchCommunicator()))
    net.register_comm_hook(hook, dgc_torch.dgc_hook)
    gen = torch.Generator().manual_seed(rank)
    x, y = torch.randn(args["batch"], *shape, generator=gen), torch.randint(10, (args["batch"],), generator=gen)
    times = []
    for _ in range(1 + args["steps"]):
        started = time.perf_counter()
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(net(x), y).backward()
        hook.step(optimizer)
        times.append(time.perf_counter() - started)
    stats = hook.last_exchange
    collectives = hook.exchange.communicator.collectives / len(times)
    dist.barrier()
    if rank == 0:
        print(json.dumps({"seconds": statistics.median(times[1:]), "bytes": stats["bytes_sent"],
                          "collectives": collectives, "size": size}), flush=True)
    dgc_torch.close_process_group()


def auto_choice(hvd, model, shape, batch):
    """auto: train.py's compression=auto decision (training/auto.py, configs/compression/auto.py's defaults)
    for this cell: forward + backward timed on a batch like the timed steps', the link measured by dense
    allreduces, the cost model asked; returns its record."""
    import torch

    from training import auto
    from training.config import load_configs
    cfg = load_configs([ROOT / "configs" / "__init__.py"], root=ROOT / "configs")
    options = auto.Auto()
    gen = torch.Generator().manual_seed(1000 + hvd.rank())
    x, y = torch.randn(batch, *shape, generator=gen), torch.randint(10, (batch,), generator=gen)
    return auto.decide(options, hvd, model, lambda: (x, y), torch.device("cpu"),
                       methods=auto.candidate_methods(cfg, options.candidates))


def worker(args):
    """One rank: ``warmup`` + ``steps`` training steps of ``model`` on a fixed random batch with ``method``;
    rank 0 prints its per-step seconds, bytes and collectives as one JSON line."""
    import horovod.torch as hvd
    import torch

    import dgc.horovod as dgc_hvd
    from dgc.compressors.dgc import DGCCompressor
    from dgc.compressors.fp16 import FP16Compressor
    from dgc.fused import FusedCommunicator
    from dgc.compressors.powersgd import PowerSGDCompressor
    from dgc.memory import DGCSGDMemory, ResidualMemory

    torch.set_num_threads(1)
    hvd.init(process_sets="dynamic" if args["method"] == "dgc_hier" else None)
    model, shape = build_model(args["model"])
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
    method = args["method"]
    decision = None
    if method == "auto":     # decided in this cell's first seconds, then the chosen method's timed steps
        decision = auto_choice(hvd, model, shape, args["batch"])
        method = AUTO_METHODS[decision["choice"]]
    named = list(model.named_parameters())
    numel = sum(p.numel() for _, p in named)
    stats = wire = None
    if method in ("dense", "fp16"):
        from dgc.costmodel import ring_allreduce_bytes
        compression = hvd.Compression.fp16 if method == "fp16" else hvd.Compression.none
        optimizer = hvd.DistributedOptimizer(optimizer, named_parameters=named, compression=compression)
        bytes_per_step, collectives = numel * (2 if method == "fp16" else 4), len(named)
        wire_per_step = ring_allreduce_bytes(hvd.size(), bytes_per_step)
    elif method in ("dgc_warmup", "dgc_warmup_switch"):     # configs/dgc/paper_warmup.py's first epoch
        compressor = DGCCompressor(0.001, warmup_epochs=4, warmup_coeff=0.25,
                                   dense_switch=method == "dgc_warmup_switch")
        compressor.set_epoch(0)
        wire = WireCount(dgc_hvd.HorovodCommunicator())
        optimizer = dgc_hvd.DistributedOptimizer(optimizer, named_parameters=named, compression=compressor,
                                                 memory=DGCSGDMemory(gradient_clipping=5.0), communicator=wire)
        stats = optimizer.exchange
    elif method in ("powersgd", "dgc", "dgc_fused", "dgc_hier"):
        communicator = dense = hierarchical = None
        memory = DGCSGDMemory(gradient_clipping=5.0)
        if method == "powersgd":
            compressor, memory = PowerSGDCompressor(rank=4), ResidualMemory()
        elif method == "dgc":
            compressor = DGCCompressor(0.001, fp16_values=True, int32_indices=True)
        elif method == "dgc_fused":   # configs/dgc/compact.py's wire format, through the fused exchange
            compressor = DGCCompressor(0.001, fp16_values=True, compact_indices=True, min_compress_numel=256)
            dense = FP16Compressor()
            communicator = FusedCommunicator(dgc_hvd.HorovodCommunicator())
        else:
            compressor = DGCCompressor(0.001 * hvd.local_size(), fp16_values=True, compact_indices=True,
                                       min_compress_numel=256)
            dense = FP16Compressor()
            leaders, local = dgc_hvd.hierarchical_communicators()
            communicator = leaders and FusedCommunicator(leaders)
            if local is not None:
                hierarchical, communicator = (communicator, FusedCommunicator(local)), None
        optimizer = dgc_hvd.DistributedOptimizer(optimizer, named_parameters=named, compression=compressor,
                                                 memory=memory, communicator=communicator,
                                                 dense_compression=dense, hierarchical=hierarchical)
        stats = optimizer.exchange
    hvd.broadcast_parameters(model.state_dict(), root_rank=0)
    gen = torch.Generator().manual_seed(hvd.rank())
    x, y = torch.randn(args["batch"], *shape, generator=gen), torch.randint(10, (args["batch"],), generator=gen)
    times = []
    for _ in range(1 + args["steps"]):
        started = time.perf_counter()
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()
        times.append(time.perf_counter() - started)
    if stats is not None:
        bytes_per_step, collectives = stats.last_exchange["bytes_sent"], stats.last_exchange["collectives"]
    if method in ("dgc_fused", "dgc_hier") and stats.communicator is not None:   # between hosts (rank 0 leads)
        collectives = stats.communicator.collectives / len(times)
    if wire is not None:
        wire_per_step = wire.bytes / len(times)
    if method == "limit":
        bytes_per_step = collectives = 0
    hvd.barrier()
    if hvd.rank() == 0:
        cell = {"seconds": statistics.median(times[1:]), "bytes": bytes_per_step, "collectives": collectives,
                "size": hvd.size(), **({"choice": decision["choice"], "auto": decision} if decision else {})}
        if method in ("dense", "fp16", "dgc_warmup", "dgc_warmup_switch"):
            cell["wire_bytes"] = round(wire_per_step)
        print(json.dumps(cell), flush=True)


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", default="2", help="comma-separated worker counts, one namespace each")
    parser.add_argument("--ranks-per-host", type=int, default=1, help="ranks sharing one namespace (a host)")
    parser.add_argument("--rates", default="10mbit,100mbit,1gbit,none", help="tc rates of every link; none: unshaped")
    parser.add_argument("--models", default="resnet20,vgg16")
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--batch", type=int, default=128, help="images per worker and step")
    parser.add_argument("--steps", default="", help="timed steps per cell as MODEL=N,... (default "
                        + ",".join(f"{k}={v}" for k, v in DEFAULT_STEPS.items()) + ")")
    parser.add_argument("--timeout", type=float, default=900, help="seconds a cell may take before it fails")
    parser.add_argument("--plot", help="write seconds per step against link rate (one panel per N and model) here")
    parser.add_argument("--json", help="write every cell's measurements here")
    parser.add_argument("--constants", help="then fit the cost model's constants on them (needs --json; "
                        "scripts/validate_costmodel.py) and write them here, its table next to it (.md)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        return args
    args.workers = [int(w) for w in args.workers.split(",")]
    args.rates, args.models = args.rates.split(","), args.models.split(",")
    args.methods = args.methods.split(",")
    steps = dict(DEFAULT_STEPS)
    for item in filter(None, args.steps.split(",")):
        model, _, count = item.partition("=")
        steps[model] = int(count)
    args.steps = steps
    for value, allowed, what in ((args.models, DEFAULT_STEPS, "model"), (args.methods, METHODS, "method")):
        bad = [v for v in value if v not in allowed]
        if bad:
            parser.error(f"unknown {what} {bad[0]!r}; expected one of {', '.join(allowed)}")
    if args.constants and not args.json:
        parser.error("--constants needs --json (the constants are fitted on the cells it records)")
    if args.batch < 1:
        parser.error(f"--batch {args.batch} must be >= 1 (images per worker and step)")
    if any(w < 1 for w in args.workers) or args.ranks_per_host < 1:
        parser.error(f"--workers {args.workers} and --ranks-per-host {args.ranks_per_host} must be >= 1")
    return args


def ratio(a, b):
    return f"{a / b:.2f}" if a and b else "-"


def main(argv=None):
    args = parse_args(argv)
    if args.worker:
        cell = json.loads(args.worker)
        (ddp_worker if cell["method"].startswith("ddp_") else worker)(cell)
        return 0
    if os.geteuid() != 0:
        print("bench_network.py: error: needs root (it creates network namespaces, veth links and tc qdiscs); "
              "run it as root or with sudo", file=sys.stderr)
        return 2
    missing = [tool for tool in ("ip", "tc", "unshare") if shutil.which(tool) is None]
    if missing:
        print(f"bench_network.py: error: {', '.join(missing)} not found (iproute2 and util-linux are needed)",
              file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    print(f"# bench_network.py {' '.join(argv if argv is not None else sys.argv[1:])}; {os.cpu_count()} CPUs; "
          f"batch {args.batch} per worker; one torch thread per worker; median seconds per step after one "
          f"warm-up step; timed steps {args.steps}", flush=True)
    rows = []
    for size in args.workers:
        hosts = -(-size // args.ranks_per_host)
        with Topology(hosts) as topology:
            for model in args.models:
                limit = None
                for rate in args.rates:
                    topology.shape(rate)
                    cells = {}
                    for method in args.methods:
                        if method == "limit" and limit is not None:
                            cells[method] = limit
                            continue
                        cell = {"model": model, "method": method, "batch": args.batch, "steps": args.steps[model],
                                "master": f"{topology.addresses[0]}:{29400 + len(rows) * len(METHODS) + len(cells)}"}
                        out = launch(topology, args.ranks_per_host, [__file__, "--worker", json.dumps(cell)],
                                     args.timeout)
                        cells[method] = json.loads(out.strip().splitlines()[-1])
                        if method == "limit":
                            limit = cells[method]
                        r = cells[method]
                        print(f"  N={size} {model} {rate} {method}: {r['seconds']:.3f} s/step, "
                              f"{r['bytes']} B, {r['collectives']} collectives"
                              + (f", auto chose {r['choice']}" if "choice" in r else ""), flush=True)
                    rows.append((size, model, rate, cells))
    print_tables(rows, args)
    if args.json:
        pathlib.Path(args.json).write_text(json.dumps([{"workers": n, "model": m, "rate": r, "cells": c}
                                                       for n, m, r, c in rows], indent=1))
    if args.plot:
        plot(rows, args.methods, args.plot)
    if args.constants:
        import validate_costmodel
        return validate_costmodel.main(["--json", args.json, "--hierarchical", "", "--constants", args.constants,
                                        "--out", str(pathlib.Path(args.constants).with_suffix(".md"))])
    return 0


def plot(rows, methods, path):
    """Seconds per step against link rate, one line per method, the compute-only limit dashed; one panel per
    (N, model)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = sorted({(n, m) for n, m, _, _ in rows})
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4), squeeze=False)
    for ax, (n, model) in zip(axes[0], panels):
        cells = [(r, c) for size, m, r, c in rows if (size, m) == (n, model)]
        rates = [r for r, _ in cells]
        for method in methods:
            ax.plot(rates, [c[method]["seconds"] for _, c in cells], "k--" if method == "limit" else "o-",
                    label=LABELS[method])
        ax.set_yscale("log")
        ax.set_title(f"{model}, {n} workers")
        ax.set_xlabel("link rate (tbf)")
        ax.set_ylabel("seconds per step")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def print_tables(rows, args):
    methods = [m for m in args.methods]
    print("\n| N | model | link | " + " | ".join(f"{LABELS[m]} s/step" for m in methods)
          + " | dense / DGC | DGC / limit | fp16 / DGC |")
    print("| ---: | :--- | :--- | " + " | ".join("---:" for _ in methods) + " | ---: | ---: | ---: |")
    for size, model, rate, cells in rows:
        s = {m: c["seconds"] for m, c in cells.items()}
        print(f"| {size} | {model} | {rate} | " + " | ".join(f"{s[m]:.3f}" for m in methods)
              + f" | {ratio(s.get('dense'), s.get('dgc'))} | {ratio(s.get('dgc'), s.get('limit'))} | "
              f"{ratio(s.get('fp16'), s.get('dgc'))} |")
    if any(m.startswith("ddp_") for m in methods):
        print("\n| N | model | link | DDP hook / Horovod (DGC fused) | DDP hook / limit | sync hook / overlapping |")
        print("| ---: | :--- | :--- | ---: | ---: | ---: |")
        for size, model, rate, cells in rows:
            s = {m: c["seconds"] for m, c in cells.items()}
            print(f"| {size} | {model} | {rate} | {ratio(s.get('ddp_dgc'), s.get('dgc_fused'))} | "
                  f"{ratio(s.get('ddp_dgc'), s.get('limit'))} | {ratio(s.get('ddp_dgc_sync'), s.get('ddp_dgc'))} |")
    if {"dgc_warmup", "dgc_warmup_switch"} <= set(methods):
        print("\n| N | model | link | warm-up pairs s/step | switch s/step | pairs / switch | wire bytes per step "
              "per worker: pairs | switch | dense |")
        print("| ---: | :--- | :--- | ---: | ---: | ---: | ---: | ---: | ---: |")
        for size, model, rate, cells in rows:
            off, on = cells["dgc_warmup"], cells["dgc_warmup_switch"]
            dense = cells["dense"]["wire_bytes"] if "dense" in cells else "-"
            print(f"| {size} | {model} | {rate} | {off['seconds']:.3f} | {on['seconds']:.3f} | "
                  f"{ratio(off['seconds'], on['seconds'])} | {off['wire_bytes']} | {on['wire_bytes']} | {dense} |")
    if "auto" in methods:
        print_auto(rows, methods)
    print("\n| N | model | link | method | images/s | bytes per step per worker | collectives per step |")
    print("| ---: | :--- | :--- | :--- | ---: | ---: | ---: |")
    for size, model, rate, cells in rows:
        for m in methods:
            c = cells[m]
            print(f"| {size} | {model} | {rate} | {LABELS[m]} | {c['size'] * args.batch / c['seconds']:.0f} | "
                  f"{c['bytes']} | {c['collectives']} |")


def print_auto(rows, methods):
    """auto's choice per cell and its seconds per step against the best fixed method among its candidates'
    (within 5% is the goal, issue 21)."""
    fixed = [m for m in AUTO_METHODS.values() if m in methods]
    print("\n| N | model | link | auto's choice | auto s/step | best fixed | best s/step | auto / best | "
          "predicted s/step (dense, fp16, dgc) |")
    print("| ---: | :--- | :--- | :--- | ---: | :--- | ---: | ---: | :--- |")
    for size, model, rate, cells in rows:
        a = cells["auto"]
        best = min(fixed, key=lambda m: cells[m]["seconds"]) if fixed else None
        predicted = ", ".join(f"{s:.3f}" for s in a["auto"]["predicted_s"].values())
        print(f"| {size} | {model} | {rate} | {a['choice']} | {a['seconds']:.3f} | {best and LABELS[best]} | "
              + (f"{cells[best]['seconds']:.3f} | {a['seconds'] / cells[best]['seconds']:.2f}" if best else "- | -")
              + f" | {predicted} |")


if __name__ == "__main__":
    try:
        sys.exit(main())
    finally:
        if os.geteuid() == 0 and "--worker" not in sys.argv:
            teardown()
