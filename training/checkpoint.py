"""Atomic checkpoints and the resume protocol.

Every file is written to a temporary file in the same folder, fsynced and renamed over the old one. At the
end of each epoch every rank first writes ``rank<R>.epoch<E>.pt`` (its own exchange state: residuals,
momenta, compressor state; and its RNG states), then, after a barrier, rank 0 writes ``checkpoint.pt``
(model, optimizer, schedule, epoch, metrics history, config text); so the rank files of the epoch that
``checkpoint.pt`` names always exist. Resuming loads both; a checkpoint of another config is refused.

Every file ends with a SHA-256 of its contents, checked on load. The previous epoch's checkpoint is kept
(``checkpoint.prev.pt`` and its rank files): when the newest is truncated or corrupt on any rank, every rank
falls back to the previous one together, with a warning. Resuming with another number of workers (or
other ranks keeping residuals) redistributes the exchange state (:func:`redistribute`): every new rank
keeping residuals takes the old ranks' sum divided by their count, so their sum (what is still owed to the
model) is preserved; the compressor state all compressing ranks share comes from one that compressed.
"""
import hashlib
import io
import os
import pathlib
import random
import tempfile
import warnings

import numpy as np
import torch

from dgc.compressors.base import Compressor

MAGIC = b"DGCSHA256"


class CorruptCheckpoint(RuntimeError):
    """A checkpoint file is truncated, altered or unreadable (the message names it)."""


def atomic_save(obj, path):
    """Write ``obj`` and its checksum to a temporary file beside ``path``, fsync, rename over ``path``: the file
    is the old one or the new one, never a mix; on any error (a full disk) the old one stays and the
    temporary file is removed."""
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    body = buffer.getvalue()
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(body + MAGIC + hashlib.sha256(body).digest())
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def rng_state():
    """The random states of this rank: CPU, NumPy, Python, and its own GPU's where it used CUDA (only the
    current device's: every other GPU is another rank's, and reading its state would open a context there)."""
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state):
    """Restore :func:`rng_state`'s ``state``; its GPU state goes to the current device, if CUDA is available
    (a CPU run's state leaves the GPU's as seeded; a GPU run's resumes on the CPU without it)."""
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    cuda = state.get("cuda")
    if cuda is None or not torch.cuda.is_available():
        return
    if isinstance(cuda, (list, tuple)):     # older checkpoints: every device's state
        device = torch.cuda.current_device()
        cuda = cuda[device] if device < len(cuda) else None
    if cuda is not None:
        torch.cuda.set_rng_state(cuda)


def rank_file(folder, rank, epoch):
    return pathlib.Path(folder) / f"rank{rank}.epoch{epoch}.pt"


class ResumeError(RuntimeError):
    """The run directory holds a checkpoint this run must not continue (the message says why)."""


def config_key(description):
    """The config text minus train.num_epochs: a run may be extended by raising the epoch count."""
    return "\n".join(line for line in description.splitlines() if not line.strip().startswith("num_epochs:"))


def previous(main_ckpt):
    main_ckpt = pathlib.Path(main_ckpt)
    return main_ckpt.with_name(f"{main_ckpt.stem}.prev{main_ckpt.suffix}")


def resume(main_ckpt, folder, rank, world, description, model, optimizer, scheduler, exchange, all_ok, leaders=None,
           extra=None):
    """Continue from ``main_ckpt`` (or, where it or a rank's file is corrupt on any rank, the previous
    checkpoint) if one exists: load model, optimizer, schedule, this rank's exchange state (redistributed
    when the number of workers or the ranks keeping residuals changed) and RNG states; return ``(epochs done,
    metrics history)``, or ``(0, [])`` for a fresh run. ``all_ok(bool)`` returns whether every rank passed
    True (a collective). ``leaders``: the ranks that keep residuals (hierarchical exchange: each host's
    leader); None: every rank. ``extra``: ``{key: object}`` whose ``load_state_dict`` takes what :func:`save`'s
    ``extra`` stored under ``key`` (e.g. the pruning masks)."""
    extra = extra or {}
    candidates = [c for c in (pathlib.Path(main_ckpt), previous(main_ckpt)) if c.is_file()]
    for number, candidate in enumerate(candidates):
        try:
            state = load(candidate)
            if config_key(state["config"]) != config_key(description):
                raise ResumeError(f"{candidate.parent.parent} holds a checkpoint of a different config; pass "
                                  "--run-dir to start a new run there (nothing was changed)")
            missing = [key for key in extra if key not in state]
            if missing:
                raise ResumeError(f"{candidate} holds no {', '.join(missing)} state, which this config needs; pass "
                                  "--run-dir to start a new run (nothing was changed)")
            rank_state = _rank_state(folder, rank, world, state, leaders, getattr(exchange, "compressor", None))
            problem = None
        except CorruptCheckpoint as error:
            problem = str(error)
        if not all_ok(problem is None):
            if number + 1 < len(candidates):
                warnings.warn(f"checkpoint {candidate} is unusable on some rank ({problem or 'another rank'}); "
                              "resuming from the previous one")
                continue
            raise ResumeError(f"no usable checkpoint in {candidate.parent}: {problem or 'corrupt on another rank'}; "
                              "move the folder away to start afresh (nothing was changed)")
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        exchange.load_state_dict(rank_state["exchange"])
        for key, obj in extra.items():
            obj.load_state_dict(state[key])
        if rank_state["rng"] is not None:
            set_rng_state(rank_state["rng"])
        return state["epoch"], state["history"]
    return 0, []


def _rank_state(folder, rank, world, state, leaders=None, compressor=None):
    """This rank's exchange state and RNG state of the checkpoint ``state``: its own file when the number of
    workers and the ranks keeping residuals (``leaders``, None: all) are the checkpoint's; else
    :func:`redistribute` over every old rank's file (and no RNG state). ``compressor``: this rank's (fresh)."""
    old_world = state.get("world_size", world)
    if old_world == world and state.get("leaders") == leaders:
        return load(rank_file(folder, rank, state["epoch"]))
    olds = [load(rank_file(folder, r, state["epoch"]))["exchange"] for r in range(old_world)]
    if rank == 0:
        warnings.warn(f"the checkpoint of epoch {state['epoch']} was written by {old_world} workers (residuals on "
                      f"ranks {state.get('leaders') or 'all'}), this run has {world} (residuals on ranks "
                      f"{leaders or 'all'}): residuals redistributed (their sum preserved), random streams restarted")
    return {"exchange": redistribute(olds, rank, world, leaders, state.get("leaders"), compressor), "rng": None}


def redistribute(old_states, rank, world, leaders=None, old_leaders=None, compressor=None):
    """Rank ``rank`` of ``world``'s exchange state from the old ranks' states ``old_states`` (one per old rank).

    ``leaders`` / ``old_leaders``: the new / old ranks that keep residuals and compress (a hierarchical
    exchange's host leaders; None: every rank). Memory: on the new leaders every buffer is the old ranks' sum
    divided by their number, on the others empty, so the sum of the residuals is preserved (with
    ``train.scale_lr_by_workers``, the default, that is the update the weights are still owed; without it the
    owed update scales by the ratio of old to new workers).

    Compressor state, split by ``compressor.shared_state`` (``compressor``: this rank's, still fresh; None:
    the stateless base :class:`~dgc.compressors.base.Compressor`): only old ranks that compressed are sources
    (the others' state is empty and would leave this rank out of step: random-k drawing other positions,
    PowerSGD another warm start). A new leader gets the shared keys of the first old leader, so every new
    leader holds the same; and the per-rank keys of old leader ``i % len(old_leaders)`` when it is the
    ``i``-th new leader: an old compressing rank's own history (e.g. Signum's momentum of the gradients it
    compressed) is a state some compressing rank really had, unlike a mix of several; taken in turn, the
    old ranks' histories are all used while there are enough new leaders, and a rank keeps its own where the
    leaders did not change. A new rank that does not compress gets ``compressor``'s own (never-compressed)
    state, as it would have had. The other entries (skipped-step count, loss scale: alike on every rank)
    are the first old leader's."""
    compressor = Compressor() if compressor is None else compressor
    keepers = list(range(world) if leaders is None else leaders)
    sources = list(range(len(old_states)) if old_leaders is None else old_leaders)
    memory = {}
    for state in old_states:
        for key, buffers in state.get("memory", {}).items():
            for name, tensor in buffers.items():
                total = memory.setdefault(key, {}).get(name)
                memory[key][name] = tensor.clone() if total is None else total.add_(tensor)
    for key, buffers in memory.items():
        memory[key] = {name: t.div_(len(keepers)) for name, t in buffers.items()} if rank in keepers else {}
    first = old_states[sources[0]]
    new = dict(first)
    if "memory" in first:
        new["memory"] = memory
    if "compressor" in first:
        if rank in keepers:
            own = old_states[sources[keepers.index(rank) % len(sources)]]["compressor"]
            new["compressor"] = {key: (first["compressor"] if key in compressor.shared_state else own)[key]
                                 for key in own}
        else:
            new["compressor"] = compressor.state_dict()
    return new


def save(main_ckpt, folder, rank, world, epoch, description, model, optimizer, scheduler, exchange, history,
         barrier, leaders=None, extra=None):
    """Checkpoint the end of ``epoch`` (1-based): every rank's file, ``barrier()``, rank 0 keeps the current
    main file (if sound) as the previous one and writes the new one (with ``world`` and ``leaders``, the ranks
    keeping residuals, for :func:`resume`, and the ``extra`` dict's entries, state alike on every rank),
    ``barrier()``, then each rank drops its files of epochs before ``epoch - 1``."""
    atomic_save({"epoch": epoch, "exchange": exchange.state_dict(), "rng": rng_state()}, rank_file(folder, rank, epoch))
    barrier()
    main_ckpt = pathlib.Path(main_ckpt)
    if rank == 0:
        if _sound(main_ckpt):
            link = previous(main_ckpt).with_suffix(".tmp")
            link.unlink(missing_ok=True)
            os.link(main_ckpt, link)
            os.replace(link, previous(main_ckpt))
        atomic_save({"epoch": epoch, "world_size": world, "leaders": leaders, "config": description,
                     "model": model.state_dict(),
                     "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "history": history,
                     **(extra or {})},
                    main_ckpt)
    barrier()
    prune_rank_files(folder, rank, epoch - 1)


def _sound(path):
    """Whether ``path`` is a usable checkpoint: by its checksum alone when it has one (no unpickling of the
    whole state every epoch), else by loading it."""
    if not path.is_file():
        return False
    try:
        if _body(path)[1]:
            return True
        load(path)
    except CorruptCheckpoint:
        return False
    return True


def prune_rank_files(folder, rank, keep_epoch):
    """Drop this rank's files of epochs before ``keep_epoch`` (no kept checkpoint names them)."""
    for path in pathlib.Path(folder).glob(f"rank{rank}.epoch*.pt"):
        if int(path.stem.split("epoch")[1]) < keep_epoch:
            path.unlink()


def _body(path):
    """``(contents without the checksum trailer, whether a checksum verified them)``; raise
    :class:`CorruptCheckpoint` if the file cannot be read, its checksum does not match or it ends inside its
    trailer. A file without a trailer (cut before it, or written before checksums existed) is returned
    unverified."""
    try:
        data = pathlib.Path(path).read_bytes()
    except OSError as error:
        raise CorruptCheckpoint(f"{path}: cannot be read ({error.strerror or error})") from None
    tail = len(MAGIC) + 32
    if len(data) < tail or data[-tail:-32] != MAGIC:
        cut = data.rfind(MAGIC[:3], max(len(data) - tail, 0))
        if cut >= 0 and data[cut:cut + len(MAGIC)] == MAGIC[:len(data) - cut]:
            raise CorruptCheckpoint(f"{path}: truncated (its checksum trailer is cut short)")
        return data, False
    body = data[:-tail]
    if hashlib.sha256(body).digest() != data[-32:]:
        raise CorruptCheckpoint(f"{path}: checksum mismatch (the file was altered or partly written)")
    return body, True


def load(path):
    """Load a checkpoint file, checking its SHA-256; raise :class:`CorruptCheckpoint` naming it if the file
    is truncated, altered, missing or unreadable."""
    path = pathlib.Path(path)
    body, _ = _body(path)
    try:
        return torch.load(io.BytesIO(body), map_location="cpu", weights_only=False)
    except Exception as error:
        raise CorruptCheckpoint(f"{path}: unreadable ({type(error).__name__}: {error})") from None
