"""What rank 0 records of a run: TensorBoard scalars and ``metrics.json`` (read by scripts/compare.py)."""
import json
import os
import pathlib

import torch
from tensorboardX import SummaryWriter


def topk_correct(output, target, ks):
    """Number of samples whose label is among the top-k predictions, for each k (as float tensors)."""
    top = output.topk(min(max(ks), output.shape[1]), dim=1).indices
    hits = top == target.unsqueeze(1)
    return [hits[:, :k].any(dim=1).sum().float() for k in ks]


class RunLog:
    """Per-step and per-epoch scalars into TensorBoard, and the run summary into metrics.json.

    ``history`` (one dict per finished epoch) travels in the checkpoint, so a resumed run keeps its curves,
    cumulative time and bytes."""

    def __init__(self, run_dir, info, target_accuracy, history=(), enabled=True):
        self.run_dir = pathlib.Path(run_dir)
        self.info = dict(info)
        self.target = float(target_accuracy)
        self.history = list(history)
        self.writer = SummaryWriter(str(self.run_dir)) if enabled else None
        if self.writer is not None and self.info.get("auto") is not None:    # compression=auto's decision
            from training.auto import summary
            self.writer.add_text("auto", f"{summary(self.info['auto'])}\n\n    "
                                 + json.dumps(self.info["auto"], indent=1).replace("\n", "\n    "), 0)

    def step(self, global_step, loss, lr, exchange):
        if self.writer is None:
            return
        self.writer.add_scalar("train/loss", loss, global_step)
        self.writer.add_scalar("train/lr", lr, global_step)
        self.writer.add_scalar("comm/compression_ratio", exchange["compression_ratio"], global_step)
        self.writer.add_scalar("comm/density", exchange["density"], global_step)
        self.writer.add_scalar("comm/bytes_sent", exchange["bytes_sent"], global_step)
        self.writer.add_scalar("comm/compress_ms", 1000 * exchange["compress_s"], global_step)
        self.writer.add_scalar("comm/decompress_ms", 1000 * exchange["decompress_s"], global_step)
        for key in ("relative_error", "snr_db"):
            if exchange[key] is not None:
                self.writer.add_scalar(f"comm/{key}", exchange[key], global_step)

    def epoch(self, record):
        """Add one finished epoch (1-based ``record['epoch']``), write its scalars and metrics.json."""
        previous = self.history[-1] if self.history else {"cumulative_time_s": 0.0, "cumulative_bytes_sent": 0}
        record = dict(record)
        record["cumulative_time_s"] = previous["cumulative_time_s"] + record["epoch_time_s"]
        record["cumulative_bytes_sent"] = previous["cumulative_bytes_sent"] + record["bytes_sent"]
        self.history.append(record)
        if self.writer is None:
            return
        for key in ("train_loss", "train_top1", "test_loss", "test_top1", "test_top5", "images_per_s",
                    "lr", "compression_ratio", "compress_ms", "decompress_ms", "relative_error", "snr_db",
                    "skipped_steps", "loss_scale", "sparsity"):
            if record.get(key) is not None:
                self.writer.add_scalar(f"epoch/{key}", record[key], record["epoch"])
        self.writer.add_scalar("epoch/time_s", record["epoch_time_s"], record["epoch"])
        self.writer.add_scalar("epoch/cumulative_bytes_sent", record["cumulative_bytes_sent"], record["epoch"])
        self.writer.flush()
        self.write_metrics()

    def summary(self):
        hist = self.history
        reached = next((h for h in hist if h["test_top1"] >= self.target), None)
        steps = sum(h["steps"] for h in hist)
        total_bytes = hist[-1]["cumulative_bytes_sent"] if hist else 0
        return {**self.info, "target_accuracy": self.target, "epochs": len(hist),
                "best_test_top1": max((h["test_top1"] for h in hist), default=None),
                "final_test_top1": hist[-1]["test_top1"] if hist else None,
                "final_train_top1": hist[-1]["train_top1"] if hist else None,
                "epochs_to_target": reached["epoch"] if reached else None,
                "time_to_target_s": reached["cumulative_time_s"] if reached else None,
                "bytes_per_step": total_bytes / steps if steps else None,
                **{f"mean_{key}": _mean(hist, key) for key in ("compression_ratio", "compress_ms", "decompress_ms",
                                                                "relative_error", "snr_db")},
                "skipped_steps": sum(h.get("skipped_steps", 0) for h in hist),
                "total_bytes_sent": total_bytes,
                "wall_time_s": hist[-1]["cumulative_time_s"] if hist else 0.0,
                "history": hist}

    def write_metrics(self):
        path = self.run_dir / "metrics.json"
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(self.summary(), indent=1))
        os.replace(tmp, path)

    def close(self):
        if self.writer is not None:
            self.writer.close()


def _mean(history, key):
    """Mean of the epochs' ``key`` (weighted by their steps), over epochs that have it; None if none does."""
    have = [h for h in history if h.get(key) is not None]
    steps = sum(h["steps"] for h in have)
    return sum(h[key] * h["steps"] for h in have) / steps if steps else None


def sum_over_workers(hvd, sums, name):
    """Sum per-rank tensors (and numbers) over all workers and return them as floats: one allreduce, on the
    tensors' device (the training device, which the backend communicates on: NCCL takes no CPU tensor)."""
    device = next((s.device for s in sums if isinstance(s, torch.Tensor)), torch.device("cpu"))
    total = hvd.allreduce(torch.stack([torch.as_tensor(s, dtype=torch.float64, device=device) for s in sums]),
                          op=hvd.Sum, name=name)
    return total.tolist()
