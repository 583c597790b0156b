"""What the replica check (dgc/replicas.py, train.check_replicas_every) costs next to training: seconds per
check, seconds per training step, and the check as a share of an epoch when it runs once per epoch (the
default; target under 0.5%); also the per-step buffer snapshot of a skippable step (dgc/buffers.py: copy
every buffer, put them back), as a share of a step.

Usage:
  .venv/bin/python scripts/bench_replicas.py [--model-config configs/cifar/resnet20.py] [--batch 128]
                                             [--workers 2] [--images 50000] [--repeats 10]

One process, one torch thread; a training step is forward, backward and SGD on a fixed random batch
(no exchange, so the step is the cheapest it can be and the share an upper bound); the check is the checksums
of every parameter and integer buffer plus their allgather over one in-process rank (the collective of a real
run carries 8 bytes per tensor per rank). An epoch is ``images / (batch * workers)`` steps. Medians.
"""
import argparse
import pathlib
import statistics
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def median_seconds(fn, repeats):
    fn()                                            # warm-up
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-config", default="configs/cifar/resnet20.py")
    parser.add_argument("--batch", type=int, default=128, help="images per worker and step")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--images", type=int, default=50000, help="training images per epoch (CIFAR-10: 50000)")
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args()

    import torch

    from dgc.buffers import BufferSnapshot
    from dgc.inprocess import InProcessGroup
    from dgc.replicas import check_replicas, replicated_tensors
    from training.config import load_configs

    torch.set_num_threads(1)
    torch.manual_seed(0)
    cfg = load_configs([args.model_config], root=ROOT / "configs")
    model = cfg.model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    x = torch.randn(args.batch, 3, 32, 32)
    y = torch.randint(cfg.data.dataset.num_classes, (args.batch,))

    def step():
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()

    communicator = InProcessGroup(1).communicator(0)
    tensors = replicated_tensors(model)
    step_s = median_seconds(step, args.repeats)
    check_s = median_seconds(lambda: check_replicas(communicator, tensors), args.repeats)
    snapshot = BufferSnapshot(model)

    def snapshot_and_restore():
        snapshot._before_forward(model, (x,))
        snapshot.end_step(skipped=True)
    snapshot_s = median_seconds(snapshot_and_restore, args.repeats)
    steps_per_epoch = args.images // (args.batch * args.workers)
    numel = sum(t.numel() for _, t in tensors)
    print(f"model {cfg.model.target.__name__}: {len(tensors)} tensors, {numel} values; batch {args.batch} "
          f"x {args.workers} workers, {steps_per_epoch} steps per epoch")
    print(f"training step: {1000 * step_s:.1f} ms   replica check: {1000 * check_s:.2f} ms   "
          f"check / step: {check_s / step_s:.4f}")
    print(f"check once per epoch / epoch: {100 * check_s / (step_s * steps_per_epoch):.4f}%")
    print(f"buffer snapshot + restore: {1000 * snapshot_s:.3f} ms per step ({100 * snapshot_s / step_s:.3f}% of a step)")


if __name__ == "__main__":
    main()
