"""Atomic checkpoints: write to a temporary file in the same folder, fsync, rename over the old one.

Rank 0 writes ``checkpoint.pt`` (model, optimizer, schedule, epoch, step, RNG states, metrics history);
every rank writes ``rank<R>.epoch<E>.pt`` with its own DGC residual/momentum state and RNG states first,
so the rank files of the epoch named in ``checkpoint.pt`` always exist.
"""
import os
import pathlib
import random
import tempfile

import numpy as np
import torch


def atomic_save(obj, path):
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def rng_state():
    return {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}


def set_rng_state(state):
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])


def rank_file(folder, rank, epoch):
    return pathlib.Path(folder) / f"rank{rank}.epoch{epoch}.pt"


def save_rank_state(folder, rank, epoch, compression_state):
    atomic_save({"epoch": epoch, "compression": compression_state, "rng": rng_state()},
                rank_file(folder, rank, epoch))


def prune_rank_files(folder, rank, keep_epoch):
    """Drop this rank's files of epochs before ``keep_epoch`` (the main checkpoint no longer names them)."""
    for path in pathlib.Path(folder).glob(f"rank{rank}.epoch*.pt"):
        if int(path.stem.split("epoch")[1]) < keep_epoch:
            path.unlink()


def load(path):
    return torch.load(path, map_location="cpu", weights_only=False)
