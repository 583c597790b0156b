"""Benchmark, in one run: does a config's input pipeline keep its training fed? The train loader's images/s
(its batches arriving on the device) beside training images/s (forward, backward and optimizer step of the
config's model on those same batches; one process, no exchange), and their ratio.

    .venv/bin/python scripts/bench_input.py --configs configs/cifar/resnet20.py [key=value ...] \
        [--device cpu|cuda] [--batches 50]

The loader is what train.py iterates (training.data.loaders, rank 0 of 1: for CIFAR the device-side
crop and flip, else DataLoader workers with pinned memory); both figures skip one warm-up batch and are
synchronised with the GPU. A ratio of 1 or more means the loader outruns training; below 1, training waits
for data. The first run on a CIFAR tree also builds its uint8 cache ("dataset ready in" says how long).
"""
import argparse
import contextlib
import pathlib
import sys
import time

import torch

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from training import data as data_lib  # noqa: E402
from training.config import ConfigError, load_configs  # noqa: E402


def synchronize(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def loader_rate(loader, count, device):
    """Images/s of ``count`` batches from ``loader`` after its first (workers started, first copy done);
    returns the rate and every batch taken (the first included)."""
    iterator = iter(loader)
    batches = [next(iterator)]
    synchronize(device)
    started = time.perf_counter()
    for _ in range(count):
        batches.append(next(iterator))
    synchronize(device)
    return sum(len(y) for _, y in batches[1:]) / (time.perf_counter() - started), batches


def training_rate(cfg, batches, device):
    """Images/s of the config's model training on ``batches`` (after one warm-up step on the first):
    autocast and channels_last as the config sets them, optimizer as configured (lr unscaled)."""
    model = cfg.model().to(device)
    optimizer = cfg.train.optimizer(model.parameters())
    amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(cfg.train.amp)
    autocast = (lambda: torch.autocast(device.type, dtype=amp_dtype)) if amp_dtype else contextlib.nullcontext
    model.train()

    def step(x, y):
        if cfg.train.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with autocast():
            loss = torch.nn.functional.cross_entropy(model(x), y)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()

    step(*batches[0])
    synchronize(device)
    started = time.perf_counter()
    for x, y in batches[1:]:
        step(x, y)
    synchronize(device)
    return sum(len(y) for _, y in batches[1:]) / (time.perf_counter() - started)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--configs", nargs="+", required=True, metavar="FILE_OR_KEY=VALUE",
                        help="config files in order, then key=value overrides (as train.py takes them)")
    parser.add_argument("--device", choices=("cpu", "cuda"),
                        help="default: the config's train.device where it names one, else CUDA when available")
    parser.add_argument("--batches", type=int, default=50, help="batches timed (after one warm-up batch)")
    args = parser.parse_args(argv)
    if args.batches < 1:
        parser.error(f"--batches must be at least 1, got {args.batches}")
    files = [c for c in args.configs if "=" not in c]
    try:
        cfg = load_configs(files, [c for c in args.configs if "=" in c], root=ROOT / "configs")
        device = args.device or cfg.train.get("device", "auto")
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        if device == "cuda" and not torch.cuda.is_available():
            parser.error("device cuda: this machine has no CUDA device")
        device = torch.device(device)
        started = time.perf_counter()
        dataset = cfg.data.dataset()
    except (ConfigError, data_lib.DatasetMissing) as error:
        parser.error(str(error))
    dataset["train"] = data_lib.subset(dataset["train"], cfg.data.train_fraction)
    dataset["test"] = data_lib.subset(dataset["test"], cfg.data.test_fraction)
    ready = time.perf_counter() - started
    batch_size = cfg.train.batch_size
    train, sampler, _ = data_lib.loaders(dataset, batch_size, 0, 1, cfg.data.num_workers, cfg.seed, device,
                                         prefetch_factor=cfg.data.prefetch_factor)
    sampler.set_epoch(0)
    count = min(args.batches, len(train) - 1)
    if count < 1:
        parser.error(f"{len(dataset['train'])} training images make {len(train)} batches of {batch_size}; "
                     "the benchmark needs 2 or more (raise data.train_fraction or lower train.batch_size)")
    kind = ("device-side batches (crop and flip on the device)" if isinstance(train, data_lib.DeviceBatches)
            else f"DataLoader, {cfg.data.num_workers} workers{', pinned' if device.type == 'cuda' else ''}")
    print(f"config: {' '.join(args.configs)}\n{cfg.data.name} ({len(dataset['train'])} training images) ready in "
          f"{ready:.1f} s; {kind}; device {device}; batch {batch_size}; {count} batches timed", flush=True)
    loader, batches = loader_rate(train, count, device)
    print(f"loader: {loader:.1f} images/s", flush=True)
    training = training_rate(cfg, batches, device)
    print(f"training: {training:.1f} images/s")
    print(f"loader / training: {loader / training:.2f} ({'the loader keeps up' if loader >= training else 'training waits for data'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
