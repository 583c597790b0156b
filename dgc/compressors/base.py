"""The compressor protocol: one tensor in, payloads out; collective results in, the average out.

A compressor never communicates and never touches the memory (GRACE's PowerSGD calls the collective library
itself and so cannot be reused by another backend). ``compress`` returns a :class:`Payload`: what to send,
through which collective, and what it amounts to locally (``sent``, for the memory's residual).
``decompress`` turns the collective's result into the averaged flat tensor or, for a compressor of several
rounds (PowerSGD: allreduce P, orthogonalize, allreduce Q), into the next round's ``(payload, ctx)``.
"""
import zlib
from dataclasses import dataclass
from typing import Any, Optional, Union

import torch

SUPPORTED_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)


@dataclass
class Sparse:
    """What a sparsifier sent: distinct flat ``indices`` and the ``values`` receivers decode there (after the
    wire encoding, e.g. fp16 rounding, so the memory keeps exactly what was lost)."""
    indices: torch.Tensor
    values: torch.Tensor


@dataclass
class Payload:
    """One worker's message for one tensor and one round.

    ``collective``: "allreduce" (averaged over workers, in place), "allgather" (concatenated along dim 0) or
    "broadcast" (rank 0's tensor, into every worker's; the hierarchical exchange's last step, not a compressor's).
    ``num_values``: gradient values it carries (for the density metric). ``sent``: this worker's contribution
    decoded (a dense tensor or :class:`Sparse`), set on at most one round's payload (the exchange updates the
    memory from it; none when nothing was sent), None on the others. ``tensor`` may share storage with the
    compressed tensor: the exchange copies it before a memory changes that tensor."""
    tensor: torch.Tensor
    collective: str
    num_values: int
    sent: Optional[Union[torch.Tensor, Sparse]] = None


class Compressor:
    """No compression (and the base class): the tensor goes dense through an averaging allreduce.

    ``min_compress_numel``: the exchange routes a tensor to a compressor only if it has at least two
    dimensions and this many elements (see :func:`dgc.exchange.is_compressible`); others go dense. None
    (this class): no tensor is routed here, all go the dense way, unchecked and without memory.

    ``shared_state``: the keys of :meth:`state_dict` whose values are the same on every rank that compresses
    (they evolve only from what all ranks see alike: step counters, an averaged warm start); every other key
    is per rank (its own history, e.g. a momentum of its own gradients). Default: none shared. A resume on
    another topology (:func:`training.checkpoint.redistribute`) gives every compressing rank the shared
    values of one rank that compressed, so the ranks go on alike, and per-rank values of the compressing
    ranks in turn. A new compressor declares its shared keys here and touches no other file."""

    min_compress_numel = None
    shared_state = ()

    def compress(self, tensor, name):
        """Return ``(payload, ctx)`` for ``tensor``, parameter ``name``'s compensated gradient in the
        parameter's shape (contiguous, so ``tensor.view(-1)`` is free)."""
        return Payload(tensor, "allreduce", tensor.numel(), sent=tensor), None

    def decompress(self, result, ctx, out=None) -> Union[torch.Tensor, "tuple[Payload, Any]"]:
        """The averaged tensor (any shape with the parameter's element count) from the collective's
        ``result``, or the next round's ``(payload, ctx)``. ``out``, when given, is a flat buffer the final
        round may write the average into (and return)."""
        return result

    def initialize(self, world_size):
        """Called once by the exchange with the number of workers its compressed payloads go to (the
        hosts' leaders, hierarchical): a compressor whose wire form depends on it (the sparse/dense switch
        of :class:`~.sparse.SparseCompressor`) keeps it. Default: nothing to do."""

    def set_epoch(self, epoch):
        """Training progress in epochs (a float for per-step schedules); compressors with a warm-up use it."""

    def state_dict(self):
        return {}

    def load_state_dict(self, state):
        pass


def check_min_numel(owner, value):
    """Raise a ValueError naming ``owner.min_compress_numel`` unless it is an int >= 1; return it."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{owner}: min_compress_numel={value!r} must be an int >= 1")
    return value


def num_selects(numel, ratio):
    """k: how many of ``numel`` values a sparsifier at ``ratio`` sends (at least one, at most all)."""
    return min(numel, max(1, round(numel * ratio)))


def name_seed(seed, name):
    """A seed every rank derives alike from a user seed and a parameter name (Python's str hash is salted
    per process, so crc32)."""
    return seed * 1_000_003 + zlib.crc32(name.encode())


def check_fraction(owner, what, value, meaning):
    """Raise a ValueError naming ``owner.what`` unless ``value`` is a number in (0, 1]."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 1:
        raise ValueError(f"{owner}: {what}={value!r} is outside (0, 1]; it is {meaning}")
