"""Benchmark: DGC compress + decompress throughput vs torch.clone and exact torch.topk, in one run.

    .venv/bin/python scripts/bench_compression.py [--device cpu|cuda] [--min-exp 16] [--max-exp 26]

Throughput is GB/s of dense fp32 gradient (numel * 4 bytes / seconds), median of repeated runs. DGC is one
worker's exchange of one gradient through the library's pipeline (dgc.exchange, in-process communicator):
the non-finite check, DGCCompressor's selection at ratio 0.001, encoding, no memory, and the scatter-add
decompression into the gradient. Printed as a Markdown table with the
ratios the targets are about: DGC / clone (goal >= 0.8 on CPU, >= 0.5 on GPU at 2^24+) and DGC speed-up over
exact top-k (goal >= 10x).
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


def timed(fn, device, repeats):
    """Median seconds of ``fn()`` over ``repeats`` runs after one warm-up run."""
    fn()
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def bench(numel, device, ratio, repeats):
    x = torch.randn(numel, device=device)
    grad = torch.empty_like(x).view(-1, 1)
    compressor = DGCCompressor(compress_ratio=ratio, min_compress_numel=1)
    exchange = Exchange([("g", grad)], InProcessGroup(1).communicator(0), compressor)
    k = compressor.num_selects(numel)

    def dgc():
        exchange.finish([exchange.start("g", x, out=grad)])

    gb = numel * 4 / 1e9
    return {"clone": gb / timed(lambda: x.clone(), device, repeats),
            "topk": gb / timed(lambda: x.abs().topk(k, sorted=False), device, max(3, repeats // 3)),
            "dgc": gb / timed(dgc, device, repeats)}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--min-exp", type=int, default=16)
    parser.add_argument("--max-exp", type=int, default=26)
    parser.add_argument("--ratio", type=float, default=0.001)
    parser.add_argument("--repeats", type=int, default=15)
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"device: {name}; torch {torch.__version__}; ratio {args.ratio}; GB/s of dense fp32 gradient\n")
    print("| elements | clone GB/s | exact topk GB/s | DGC GB/s | DGC / clone | DGC / topk |")
    print("| ---: | ---: | ---: | ---: | ---: | ---: |")
    for exp in range(args.min_exp, args.max_exp + 1):
        r = bench(2 ** exp, device, args.ratio, args.repeats)
        print(f"| 2^{exp} | {r['clone']:.2f} | {r['topk']:.2f} | {r['dgc']:.2f} | "
              f"{r['dgc'] / r['clone']:.2f} | {r['dgc'] / r['topk']:.1f}x |", flush=True)


if __name__ == "__main__":
    main()
