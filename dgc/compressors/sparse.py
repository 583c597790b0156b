"""What every sparsifier shares: k (value, index) pairs per tensor in one fixed-size allgather, and a
decompression that gives every rank the same bits."""
from dataclasses import dataclass

import torch

from dgc.compressors.base import Compressor, Payload, Sparse, check_fraction, check_min_numel, num_selects


@dataclass
class _Ctx:
    k: int
    numel: int
    dtype: torch.dtype


class SparseCompressor(Compressor):
    """Base of the sparsifiers: send the ``select``-ed ``compress_ratio`` fraction of a tensor.

    Every worker sends exactly ``k = num_selects(numel)`` pairs, so the allgather has a size known before
    it starts (never empty, no size exchange). Values travel as fp16 with ``fp16_values`` (clamped to
    fp16's range; the rounding and clamping error stays in the memory through ``Payload.sent``) and indices
    as int32 with ``int32_indices``; both are packed into one uint8 buffer: one collective per tensor.
    Subclasses implement :meth:`select`."""

    def __init__(self, compress_ratio=0.001, fp16_values=False, int32_indices=False, min_compress_numel=1024):
        owner = type(self).__name__
        check_fraction(owner, "compress_ratio", compress_ratio, "the fraction of gradient values sent per step")
        self.min_compress_numel = check_min_numel(owner, min_compress_numel)
        self.compress_ratio = float(compress_ratio)
        self.value_dtype = torch.float16 if fp16_values else None
        self.index_dtype = torch.int32 if int32_indices else torch.int64

    def num_selects(self, numel):
        """k: how many values a tensor of ``numel`` elements sends at the current ratio (at least one)."""
        return num_selects(numel, self.compress_ratio)

    def select(self, x, k):
        """Indices of the k values of the flat tensor ``x`` to send (distinct)."""
        raise NotImplementedError

    def compress(self, tensor, name):
        if self.index_dtype == torch.int32 and tensor.numel() >= 2 ** 31:
            raise ValueError(f"{type(self).__name__}: int32_indices cannot address {name!r} "
                             f"({tensor.numel()} >= 2^31 elements)")
        flat = tensor.view(-1)
        k = self.num_selects(flat.numel())
        indices = self.select(flat, k)
        values = flat[indices]
        limit = torch.finfo(torch.float16).max
        wire = values if self.value_dtype is None else values.clamp(-limit, limit).to(self.value_dtype)
        packed = torch.cat([wire.view(torch.uint8), indices.to(self.index_dtype).view(torch.uint8)])
        sent = Sparse(indices, wire.to(values.dtype))
        return Payload(packed, "allgather", k, sent), _Ctx(k, tensor.numel(), tensor.dtype)

    def decompress(self, result, ctx, out=None):
        """Average every worker's pairs into a dense flat tensor, accumulated in float32 or wider (16-bit
        values never accumulate in 16 bits). Deterministic on every device: one ``index_add_`` per worker, in
        rank order; a worker's indices are distinct, so no element receives two atomic adds in one call
        (CUDA's ``index_add_`` is only non-deterministic for repeated indices), and every rank adds the same
        bytes in the same order."""
        value_dtype = self.value_dtype or ctx.dtype
        value_bytes = ctx.k * value_dtype.itemsize
        per_worker = result.view(-1, value_bytes + ctx.k * self.index_dtype.itemsize)
        total = accumulator(ctx.numel, ctx.dtype, result.device, out)
        values = _aligned(per_worker[:, :value_bytes]).view(value_dtype).to(total.dtype)
        indices = _aligned(per_worker[:, value_bytes:]).view(self.index_dtype).long()
        for worker_indices, worker_values in zip(indices, values):
            total.index_add_(0, worker_indices, worker_values)
        return total.div_(per_worker.shape[0])

    def state_dict(self):
        return {"compress_ratio": self.compress_ratio}

    def load_state_dict(self, state):
        self.compress_ratio = state["compress_ratio"]


def accumulator(numel, dtype, device, out=None):
    """Zeros to sum workers' contributions in: ``out`` when it already has the accumulation dtype (float32
    or wider), else a new tensor of that dtype."""
    acc_dtype = torch.promote_types(dtype, torch.float32)
    if out is not None and out.dtype == acc_dtype:
        return out.zero_()
    return torch.zeros(numel, dtype=acc_dtype, device=device)


def _aligned(byte_columns):
    """A fresh contiguous copy, so the bytes can be viewed as wider elements (the offset starts at 0)."""
    return byte_columns.clone(memory_format=torch.contiguous_format)
