"""What every sparsifier shares: (value, index) pairs per tensor packed into one uint8 buffer of a size
known before the collective, and a decompression that gives every rank the same bits."""
from dataclasses import dataclass

import torch

from dgc.compressors.base import Compressor, Payload, Sparse, check_fraction, check_min_numel, num_selects


@dataclass
class _Ctx:
    k: int
    numel: int
    dtype: torch.dtype


class SparseCompressor(Compressor):
    """Base of the fixed-count sparsifiers: send the ``select``-ed ``compress_ratio`` fraction of a tensor.

    Every worker sends exactly ``k = num_selects(numel)`` pairs, so the allgather has a size known before
    it starts (never empty, no size exchange). The wire encoding of the pairs is :class:`Pairs`'s; subclasses
    implement :meth:`select`."""

    def __init__(self, compress_ratio=0.001, fp16_values=False, int32_indices=False, min_compress_numel=1024,
                 int8_values=False):
        owner = type(self).__name__
        check_fraction(owner, "compress_ratio", compress_ratio, "the fraction of gradient values sent per step")
        self.min_compress_numel = check_min_numel(owner, min_compress_numel)
        self.compress_ratio = float(compress_ratio)
        self.pairs = Pairs(owner, fp16_values, int8_values, int32_indices)

    def num_selects(self, numel):
        """k: how many values a tensor of ``numel`` elements sends at the current ratio (at least one)."""
        return num_selects(numel, self.compress_ratio)

    def select(self, x, k):
        """Indices of the k values of the flat tensor ``x`` to send (distinct)."""
        raise NotImplementedError

    def compress(self, tensor, name):
        flat = tensor.view(-1)
        self.pairs.check_addressable(flat, name)
        k = self.num_selects(flat.numel())
        indices = self.select(flat, k)
        packed, sent = self.pairs.encode(flat[indices], indices, k)
        return Payload(packed, "allgather", k, sent), _Ctx(k, tensor.numel(), tensor.dtype)

    def decompress(self, result, ctx, out=None):
        total = accumulator(ctx.numel, ctx.dtype, result.device, out)
        rows = result.view(-1, self.pairs.nbytes(ctx.k, ctx.dtype))
        self.pairs.add(total, rows, [ctx.k] * rows.shape[0], ctx.dtype)
        return total.div_(rows.shape[0])

    def state_dict(self):
        return {"compress_ratio": self.compress_ratio}

    def load_state_dict(self, state):
        self.compress_ratio = state["compress_ratio"]


class Pairs:
    """The wire encoding of up to ``capacity`` (value, index) pairs: values, then indices, in one uint8 row.

    Values go as the gradient's dtype, as fp16 (``fp16_values``: clamped to fp16's range) or as int8 with
    one float32 scale max|v|/127 in front (``int8_values``: rounded to nearest); indices as int64 or int32
    (``int32_indices``). ``encode`` also returns what the receivers will decode (a :class:`Sparse`), so an
    error-feedback memory keeps exactly what the encoding lost. Rows shorter than ``capacity`` are padded;
    receivers decode only each worker's own count."""

    def __init__(self, owner, fp16_values=False, int8_values=False, int32_indices=False):
        if fp16_values and int8_values:
            raise ValueError(f"{owner}: fp16_values=True and int8_values=True; choose one value encoding")
        self.owner = owner
        self.value_dtype = torch.float16 if fp16_values else torch.int8 if int8_values else None
        self.index_dtype = torch.int32 if int32_indices else torch.int64

    def header_bytes(self):
        return 4 if self.value_dtype == torch.int8 else 0

    def nbytes(self, capacity, dtype):
        """Bytes of one row of ``capacity`` pairs for a gradient of ``dtype``."""
        value_size = (self.value_dtype or dtype).itemsize
        return self.header_bytes() + capacity * (value_size + self.index_dtype.itemsize)

    def check_addressable(self, flat, name):
        if self.index_dtype == torch.int32 and flat.numel() >= 2 ** 31:
            raise ValueError(f"{self.owner}: int32_indices cannot address {name!r} "
                             f"({flat.numel()} >= 2^31 elements)")

    def encode(self, values, indices, capacity):
        """``(row, sent)``: the uint8 row for ``values`` at distinct ``indices`` padded to ``capacity``
        pairs, and the pairs as receivers decode them."""
        header = values.new_empty(0, dtype=torch.uint8)
        if self.value_dtype == torch.int8:
            scale = (values.abs().max() if values.numel() else values.new_zeros(())).float() / 127
            wire = (values.float() / scale.clamp(min=torch.finfo(torch.float32).tiny)).round().to(torch.int8)
            decoded = (wire.float() * scale).to(values.dtype)
            header = scale.reshape(1).view(torch.uint8)
        elif self.value_dtype == torch.float16:
            limit = torch.finfo(torch.float16).max
            wire = values.clamp(-limit, limit).to(torch.float16)
            decoded = wire.to(values.dtype)
        else:
            wire = decoded = values
        pad = capacity - values.numel()
        wire = torch.cat([wire, wire.new_zeros(pad)])
        wire_indices = torch.cat([indices, indices.new_zeros(pad)]).to(self.index_dtype)
        row = torch.cat([header, wire.view(torch.uint8), wire_indices.view(torch.uint8)])
        return row, Sparse(indices, decoded)

    def add(self, total, rows, counts, dtype):
        """Add every worker's pairs (``rows``: one per worker, in rank order; ``counts``: how many of each
        row's pairs are real) into ``total``. Deterministic on every device: one ``index_add_`` per worker, in
        rank order; a worker's indices are distinct, so no element receives two atomic adds in one call
        (CUDA's ``index_add_`` is only non-deterministic for repeated indices), and every rank adds the same
        bytes in the same order."""
        capacity = (rows.shape[1] - self.header_bytes()) // (self.nbytes(1, dtype) - self.header_bytes())
        value_dtype = self.value_dtype or dtype
        start = self.header_bytes()
        split = start + capacity * value_dtype.itemsize
        values = _aligned(rows[:, start:split]).view(value_dtype).to(total.dtype)
        if self.value_dtype == torch.int8:
            values *= _aligned(rows[:, :start]).view(torch.float32).to(total.dtype)
        indices = _aligned(rows[:, split:]).view(self.index_dtype).long()
        for worker_indices, worker_values, count in zip(indices, values, counts):
            total.index_add_(0, worker_indices[:count], worker_values[:count])
        return total


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
