"""Benchmark, in one run: (1) DGC compress + decompress throughput vs torch.clone and exact torch.topk, and
DGC's compress side with momentum correction vs a copy_ into a preallocated buffer;
(2) every compressor of configs/compression/ on the same gradients: throughput, bytes on the wire / dense
fp32, and relative L2 error of what one worker's exchange delivers (2^16 to 2^24 elements as matrices, and
the whole gradient of ResNet-20 and VGG-16 on one random CIFAR batch).

    .venv/bin/python scripts/bench_compression.py [--device cpu|cuda] [--min-exp 16] [--max-exp 26]
    .venv/bin/python scripts/bench_compression.py --breakdown 24     # the DGC+mc compress side, per operator

Throughput is GB/s of dense fp32 gradient (numel * 4 bytes / seconds), median of repeated runs. DGC is one
worker's exchange of one gradient through the library's pipeline (dgc.exchange, in-process communicator):
the non-finite check, DGCCompressor's selection at ratio 0.001, encoding, no memory, and the scatter-add
decompression into the gradient. "DGC+mc compress" is the compress side alone (exchange.start: the check,
DGCSGDMemory's clipping, weight decay, momentum and velocity, the selection, the encoding and the memory
update), as in training with configs/dgc. Printed as a Markdown table with the ratios the targets are about:
DGC / clone (goal >= 0.8 on CPU, >= 0.5 on GPU at 2^24+), DGC speed-up over exact top-k (goal >= 10x) and
DGC+mc compress / copy_ (goal >= 0.3).
"""
import argparse
import statistics
import sys
import time
import pathlib

import torch

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))
from dgc.compressors.dgc import DGCCompressor  # noqa: E402
from dgc.exchange import Exchange  # noqa: E402
from dgc.inprocess import InProcessGroup  # noqa: E402
from dgc.memory import DGCSGDMemory  # noqa: E402
from models.cifar_resnet import resnet20  # noqa: E402
from models.vgg import vgg16  # noqa: E402
from training.config import load_configs  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parent.parent


def timed(fn, device, repeats, after=None):
    """Median seconds of ``fn()`` over ``repeats`` runs after one warm-up run (``after()``, untimed, follows
    each run)."""
    times = []
    for _ in range(repeats + 1):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
        if after is not None:
            after()
    return statistics.median(times[1:])


def corrected_exchange(numel, device, ratio):
    """The compress side as training runs it with configs/dgc: an exchange of one (rows x cols) parameter
    with DGCSGDMemory (clipping, weight decay, Nesterov momentum); returns it and the parameter."""
    rows = 2 ** (numel.bit_length() // 2)
    param = torch.nn.Parameter(torch.randn(rows, numel // rows, device=device))
    optimizer = torch.optim.SGD([param], lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-4)
    exchange = Exchange([("w", param)], InProcessGroup(1).communicator(0),
                        DGCCompressor(compress_ratio=ratio, min_compress_numel=1),
                        DGCSGDMemory(gradient_clipping=5.0), optimizer)
    return exchange, param


def breakdown(exp, device, ratio, repeats):
    """Where the compress side's time goes: torch.profiler's self CPU time per operator in one call of
    Exchange.start on 2^exp elements (mean over repeats), next to one copy_ of the same size."""
    numel = 2 ** exp
    x = torch.randn(numel, device=device)
    exchange, param = corrected_exchange(numel, device, ratio)
    average, buffer = torch.empty_like(param), torch.empty_like(x)
    copy_ms = 1e3 * timed(lambda: buffer.copy_(x), device, repeats)
    exchange.finish([exchange.start("w", x.view(param.shape), out=average)])
    per_op, wall = {}, []
    for _ in range(repeats):
        with torch.profiler.profile() as prof:
            started = time.perf_counter()
            pending = exchange.start("w", x.view(param.shape), out=average)
            wall.append(time.perf_counter() - started)
        exchange.finish([pending])
        for event in prof.key_averages():
            calls, ms = per_op.get(event.key, (0, 0.0))
            per_op[event.key] = (calls + event.count, ms + event.self_cpu_time_total / 1e3)
    start_ms = 1e3 * statistics.median(wall)
    print(f"2^{exp} elements: copy_ {copy_ms:.3f} ms; Exchange.start {start_ms:.3f} ms "
          f"(median, under the profiler); self CPU time per call:\n")
    print("| operator | calls | ms |")
    print("| :--- | ---: | ---: |")
    for key, (calls, ms) in sorted(per_op.items(), key=lambda item: -item[1][1]):
        print(f"| {key} | {calls / repeats:g} | {ms / repeats:.3f} |")


def bench(numel, device, ratio, repeats):
    x = torch.randn(numel, device=device)
    grad = torch.empty_like(x).view(-1, 1)
    compressor = DGCCompressor(compress_ratio=ratio, min_compress_numel=1)
    exchange = Exchange([("g", grad)], InProcessGroup(1).communicator(0), compressor)
    k = compressor.num_selects(numel)

    def dgc():
        exchange.finish([exchange.start("g", x, out=grad)])

    corrected, param = corrected_exchange(numel, device, ratio)
    pending = []
    buffer, average = torch.empty_like(x), torch.empty_like(param)
    gb = numel * 4 / 1e9
    return {"copy": gb / timed(lambda: buffer.copy_(x), device, repeats),
            "mc": gb / timed(lambda: pending.append(corrected.start("w", x.view(param.shape), out=average)),
                             device, repeats,
                             after=lambda: corrected.finish([pending.pop()])),
            "clone": gb / timed(lambda: x.clone(), device, repeats),
            "topk": gb / timed(lambda: x.abs().topk(k, sorted=False), device, max(3, repeats // 3)),
            "dgc": gb / timed(dgc, device, repeats)}


def family_row(config, named_grads, device, repeats):
    """GB/s, wire bytes / dense fp32 bytes and relative L2 error of one worker exchanging ``named_grads``
    through the compressor and memory that ``config`` selects (bytes and error of the first exchange, with
    empty memory; GB/s over repeats of the same gradients)."""
    cfg = load_configs([str(ROOT / "configs/digits/digitsnet.py"), str(config)], root=ROOT / "configs")
    memory = cfg.train.memory() if cfg.train.memory is not None else None
    params = [(name, torch.nn.Parameter(g.clone())) for name, g in named_grads]
    optimizer = torch.optim.SGD([p for _, p in params], lr=0.1, momentum=0.9)
    exchange = Exchange(params, InProcessGroup(1).communicator(0), cfg.train.compression(), memory, optimizer)
    outs = {name: torch.empty_like(g) for name, g in named_grads}

    def run():
        exchange.finish([exchange.start(name, g, out=outs[name]) for name, g in named_grads])

    run()
    wire = exchange.collect()["bytes_sent"]
    error = torch.linalg.vector_norm(torch.cat([(outs[n] - g).view(-1) for n, g in named_grads]))
    norm = torch.linalg.vector_norm(torch.cat([g.view(-1) for _, g in named_grads]))
    dense = sum(g.numel() * 4 for _, g in named_grads)
    return dense / 1e9 / timed(run, device, repeats), wire / dense, (error / norm).item()


def model_gradient(build, device):
    torch.manual_seed(0)
    model = build().to(device)
    x, y = torch.randn(32, 3, 32, 32, device=device), torch.randint(10, (32,), device=device)
    torch.nn.functional.cross_entropy(model(x), y).backward()
    return [(name, p.grad.detach().clone()) for name, p in model.named_parameters()]


def family(device, exps, repeats):
    print("\n| compressor | gradient | GB/s | wire / dense | relative error |")
    print("| :--- | :--- | ---: | ---: | ---: |")
    gradients = []
    for exp in exps:
        rows = 2 ** (exp // 2)
        gradients.append((f"2^{exp}", [("w", torch.randn(rows, 2 ** exp // rows, device=device))]))
    gradients += [("ResNet-20", model_gradient(resnet20, device)), ("VGG-16", model_gradient(vgg16, device))]
    for config in sorted((ROOT / "configs" / "compression").glob("*.py")):
        for label, named_grads in gradients:
            gbs, wire, error = family_row(config, named_grads, device, repeats)
            print(f"| {config.stem} | {label} | {gbs:.2f} | {wire:.4f} | {error:.3f} |", flush=True)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--min-exp", type=int, default=16)
    parser.add_argument("--max-exp", type=int, default=26)
    parser.add_argument("--ratio", type=float, default=0.001)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--family-exps", default="16,20,24,26", help="matrix sizes (powers of two) for table 2")
    parser.add_argument("--family-repeats", type=int, default=3)
    parser.add_argument("--breakdown", type=int, metavar="EXP",
                        help="only profile the DGC+mc compress side on 2^EXP elements, operator by operator")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"device: {name}; torch {torch.__version__}; ratio {args.ratio}; GB/s of dense fp32 gradient\n")
    if args.breakdown is not None:
        return breakdown(args.breakdown, device, args.ratio, args.repeats)
    print("| elements | clone GB/s | exact topk GB/s | DGC GB/s | DGC / clone | DGC / topk | copy_ GB/s | "
          "DGC+mc compress GB/s | DGC+mc compress / copy_ |")
    print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for exp in range(args.min_exp, args.max_exp + 1):
        r = bench(2 ** exp, device, args.ratio, args.repeats)
        print(f"| 2^{exp} | {r['clone']:.2f} | {r['topk']:.2f} | {r['dgc']:.2f} | "
              f"{r['dgc'] / r['clone']:.2f} | {r['dgc'] / r['topk']:.1f}x | {r['copy']:.2f} | {r['mc']:.2f} | "
              f"{r['mc'] / r['copy']:.2f} |", flush=True)
    family(device, [int(e) for e in args.family_exps.split(",") if e], args.family_repeats)


if __name__ == "__main__":
    main()
