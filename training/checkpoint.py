"""Atomic checkpoints and the resume protocol.

Every file is written to a temporary file in the same folder, fsynced and renamed over the old one. At the
end of each epoch every rank first writes ``rank<R>.epoch<E>.pt`` (its own exchange state: residuals,
momenta, compressor state; and its RNG states), then, after a barrier, rank 0 writes ``checkpoint.pt``
(model, optimizer, schedule, epoch, metrics history, config text); so the rank files of the epoch that
``checkpoint.pt`` names always exist. Resuming loads both; a checkpoint of another config is refused.
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
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state):
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def rank_file(folder, rank, epoch):
    return pathlib.Path(folder) / f"rank{rank}.epoch{epoch}.pt"


class ResumeError(RuntimeError):
    """The run directory holds a checkpoint this run must not continue (the message says why)."""


def config_key(description):
    """The config text minus train.num_epochs: a run may be extended by raising the epoch count."""
    return "\n".join(line for line in description.splitlines() if not line.strip().startswith("num_epochs:"))


def resume(main_ckpt, folder, rank, description, model, optimizer, scheduler, exchange):
    """Continue from ``main_ckpt`` if it exists: load model, optimizer, schedule, this rank's exchange state
    and RNG states; return ``(epochs done, metrics history)``, or ``(0, [])`` for a fresh run."""
    main_ckpt = pathlib.Path(main_ckpt)
    if not main_ckpt.is_file():
        return 0, []
    state = load(main_ckpt)
    if config_key(state["config"]) != config_key(description):
        raise ResumeError(f"{main_ckpt.parent.parent} holds a checkpoint of a different config; pass --run-dir "
                          "to start a new run there (nothing was changed)")
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    rank_state = load(rank_file(folder, rank, state["epoch"]))
    exchange.load_state_dict(rank_state["exchange"])
    set_rng_state(rank_state["rng"])
    return state["epoch"], state["history"]


def save(main_ckpt, folder, rank, epoch, description, model, optimizer, scheduler, exchange, history, barrier):
    """Checkpoint the end of ``epoch`` (1-based): every rank's file, ``barrier()``, rank 0's main file,
    ``barrier()``, then each rank drops its older files."""
    atomic_save({"epoch": epoch, "exchange": exchange.state_dict(), "rng": rng_state()}, rank_file(folder, rank, epoch))
    barrier()
    if rank == 0:
        atomic_save({"epoch": epoch, "config": description, "model": model.state_dict(),
                     "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "history": history},
                    main_ckpt)
    barrier()
    prune_rank_files(folder, rank, epoch)


def prune_rank_files(folder, rank, keep_epoch):
    """Drop this rank's files of epochs before ``keep_epoch`` (the main checkpoint no longer names them)."""
    for path in pathlib.Path(folder).glob(f"rank{rank}.epoch*.pt"):
        if int(path.stem.split("epoch")[1]) < keep_epoch:
            path.unlink()


def load(path):
    return torch.load(path, map_location="cpu", weights_only=False)
