"""What every sparsifier shares: (value, index) pairs per tensor packed into one uint8 buffer of a size
known before the collective, a decompression that gives every rank the same bits, and the lossless switch to
a dense allreduce where the allgather of pairs would move more bytes (SparCML, Renggli et al., SC'19)."""
from dataclasses import dataclass

import torch

from dgc.compressors.base import Compressor, Payload, Sparse, check_fraction, check_min_numel, num_selects
from dgc.costmodel import sparse_is_larger


@dataclass
class _Ctx:
    k: int
    numel: int
    dtype: torch.dtype
    dense: bool = False
    """The selection went densely, through an averaging allreduce (:attr:`SparseCompressor.dense_switch`)."""


class SparseCompressor(Compressor):
    """Base of the fixed-count sparsifiers: send the ``select``-ed ``compress_ratio`` fraction of a tensor.

    Every worker sends exactly ``k = num_selects(numel)`` pairs, so the allgather has a size known before
    it starts (never empty, no size exchange). The wire encoding of the pairs is :class:`Pairs`'s; subclasses
    implement :meth:`select`.

    ``dense_switch`` (SparCML, SC'19): where an allgather of every worker's k pairs would move more bytes
    than a ring allreduce of the tensor (:func:`dgc.costmodel.sparse_is_larger`; at high ratios or on many
    workers, e.g. the first warm-up epoch's 25%), the selection goes instead as a dense tensor, its decoded
    values (after the fp16/int8 rounding) at the selected indices and zeros elsewhere, through an averaging
    allreduce in the accumulation dtype (float32). The sum, the memory's residual and the density are those of
    the sparse path (fp32 sums in another order); only bytes and time change. Every rank decides alike
    from sizes alone (the world size from :meth:`initialize`, k, numel, the wire format): no collective, no
    host read. False: always the allgather of pairs."""

    def __init__(self, compress_ratio=0.001, fp16_values=False, int32_indices=False, min_compress_numel=1024,
                 int8_values=False, compact_indices=False, dense_switch=True):
        owner = type(self).__name__
        check_fraction(owner, "compress_ratio", compress_ratio, "the fraction of gradient values sent per step")
        if not isinstance(dense_switch, bool):
            raise ValueError(f"{owner}: dense_switch={dense_switch!r} must be True (send a selection densely "
                             "where that moves fewer bytes) or False (always the allgather of pairs)")
        self.min_compress_numel = check_min_numel(owner, min_compress_numel)
        self.compress_ratio = float(compress_ratio)
        self.pairs = Pairs(owner, fp16_values, int8_values, int32_indices, compact_indices)
        self.dense_switch = dense_switch
        self.world_size = 1

    def initialize(self, world_size):
        self.world_size = world_size

    def num_selects(self, numel):
        """k: how many values a tensor of ``numel`` elements sends at the current ratio (at least one)."""
        return num_selects(numel, self.compress_ratio)

    def goes_dense(self, k, dtype, numel):
        """Whether ``k`` pairs of a ``numel``-element tensor of ``dtype`` go densely (see the class doc)."""
        return self.dense_switch and self.pairs.goes_dense(self.world_size, k, dtype, numel)

    def select(self, x, k):
        """Indices of the k values of the flat tensor ``x`` to send (distinct)."""
        raise NotImplementedError

    def compress(self, tensor, name):
        flat = tensor.view(-1)
        self.pairs.check_addressable(flat, name)
        k, numel = self.num_selects(flat.numel()), flat.numel()
        indices = self.select(flat, k)
        ctx = _Ctx(k, numel, tensor.dtype, self.goes_dense(k, tensor.dtype, numel))
        if ctx.dense:
            dense, sent = self.pairs.encode_dense(flat[indices], indices, numel)
            return Payload(dense, "allreduce", k, sent), ctx
        packed, sent = self.pairs.encode(flat[indices], indices, k, numel)
        return Payload(packed, "allgather", k, sent), ctx

    def decompress(self, result, ctx, out=None):
        if ctx.dense:
            return dense_average(result, out)
        total = accumulator(ctx.numel, ctx.dtype, result.device, out)
        rows = result.view(-1, self.pairs.nbytes(ctx.k, ctx.dtype, ctx.numel))
        self.pairs.add(total, rows, [ctx.k] * rows.shape[0], ctx.dtype)
        return total.div_(rows.shape[0])

    def state_dict(self):
        return {"compress_ratio": self.compress_ratio}

    def load_state_dict(self, state):
        self.compress_ratio = state["compress_ratio"]


class Pairs:
    """The wire encoding of up to ``capacity`` (value, index) pairs of an n-element tensor, in one uint8 row:
    [scale] values [block counts] indices.

    Values go as the compressed tensor's dtype (float32 from a memory, even for 16-bit gradients), as fp16
    (``fp16_values``: clamped to fp16's range) or as int8 with one float32 scale max|v|/127 in front
    (``int8_values``: rounded to nearest). Indices go as int64, int32 (``int32_indices``) or, with
    ``compact_indices``, sorted and as 16-bit offsets within blocks of 2^16 elements, preceded by each
    block's count as int32 (none for n <= 2^16): 2 bytes per index plus 4 ceil(n / 2^16) bytes. Every
    size depends only on capacity and n, so it is known before the collective.
    ``encode`` also returns what the receivers will decode (a :class:`Sparse`), so an error-feedback memory
    keeps exactly what the encoding lost. Rows shorter than ``capacity`` are padded; receivers decode only
    each worker's own count."""

    BLOCK = 2 ** 16

    def __init__(self, owner, fp16_values=False, int8_values=False, int32_indices=False, compact_indices=False):
        if fp16_values and int8_values:
            raise ValueError(f"{owner}: fp16_values=True and int8_values=True; choose one value encoding")
        self.owner = owner
        self.value_dtype = torch.float16 if fp16_values else torch.int8 if int8_values else None
        self.index_dtype = torch.int16 if compact_indices else torch.int32 if int32_indices else torch.int64

    def _blocks(self, numel):
        """How many per-block counts the row carries (compact indices over more than one block), else 0."""
        blocks = -(-numel // self.BLOCK)
        return blocks if self.index_dtype == torch.int16 and blocks > 1 else 0

    def _layout(self, capacity, dtype, numel):
        """Byte sizes of the row's segments: scale, values, block counts, indices."""
        return (4 if self.value_dtype == torch.int8 else 0, capacity * (self.value_dtype or dtype).itemsize,
                4 * self._blocks(numel), capacity * self.index_dtype.itemsize)

    def nbytes(self, capacity, dtype, numel):
        """Bytes of one row of ``capacity`` pairs for an ``numel``-element gradient of ``dtype``."""
        return sum(self._layout(capacity, dtype, numel))

    def check_addressable(self, flat, name):
        if self.index_dtype == torch.int32 and flat.numel() >= 2 ** 31:
            raise ValueError(f"{self.owner}: int32_indices cannot address {name!r} "
                             f"({flat.numel()} >= 2^31 elements)")

    def _values(self, values):
        """``(header, wire, decoded)``: the row's scale bytes (int8 values; else none), the values in their
        wire dtype and as receivers decode them (in ``values``' dtype)."""
        header = values.new_empty(0, dtype=torch.uint8)
        if self.value_dtype == torch.int8:
            scale = (values.abs().max() if values.numel() else values.new_zeros(())).float() / 127
            wire = (values.float() / scale.clamp(min=torch.finfo(torch.float32).tiny)).round().to(torch.int8)
            return scale.reshape(1).view(torch.uint8), wire, (wire.float() * scale).to(values.dtype)
        if self.value_dtype == torch.float16:
            limit = torch.finfo(torch.float16).max
            wire = values.clamp(-limit, limit).to(torch.float16)
            return header, wire, wire.to(values.dtype)
        return header, values, values

    def goes_dense(self, workers, capacity, dtype, numel):
        """Whether an allgather of rows of ``capacity`` pairs from ``workers`` workers moves more bytes than an
        allreduce of the ``numel``-element selection sent densely in the accumulation dtype (float32 or wider):
        the sparse/dense switch's rule (SparCML, SC'19), from sizes alone."""
        return sparse_is_larger(workers, self.nbytes(capacity, dtype, numel), numel,
                                torch.promote_types(dtype, torch.float32).itemsize)

    def encode_dense(self, values, indices, numel):
        """``(dense, sent)``: ``values`` at distinct ``indices`` as receivers of their pairs would decode them
        (the wire's rounding), scattered into ``numel`` zeros of the accumulation dtype (distinct indices: one
        deterministic scatter), and as a :class:`Sparse` (for the memory, as :meth:`encode`'s)."""
        decoded = self._values(values)[2]
        dense = torch.zeros(numel, dtype=torch.promote_types(values.dtype, torch.float32), device=values.device)
        return dense.index_copy_(0, indices, decoded.to(dense.dtype)), Sparse(indices, decoded)

    def encode(self, values, indices, capacity, numel):
        """``(row, sent)``: the uint8 row for ``values`` at distinct ``indices`` (of a ``numel``-element
        tensor) padded to ``capacity`` pairs, and the pairs as receivers decode them."""
        header, wire, decoded = self._values(values)
        counts = header[:0]
        if self.index_dtype == torch.int16:
            indices, order = indices.sort()
            wire, decoded = wire[order], decoded[order]
            if self._blocks(numel):     # per block, from the sorted indices: no atomics, no host read
                starts = torch.arange(self._blocks(numel) + 1, device=indices.device) * self.BLOCK
                counts = torch.searchsorted(indices, starts).diff().to(torch.int32).view(torch.uint8)
            offsets = indices % self.BLOCK                    # as int16: 2^15.. become negative; add() masks
            wire_indices = torch.where(offsets >= 2 ** 15, offsets - self.BLOCK, offsets).to(torch.int16)
        else:
            wire_indices = indices.to(self.index_dtype)
        pad = capacity - values.numel()
        wire = torch.cat([wire, wire.new_zeros(pad)])
        wire_indices = torch.cat([wire_indices, wire_indices.new_zeros(pad)])
        row = torch.cat([header, wire.view(torch.uint8), counts, wire_indices.view(torch.uint8)])
        return row, Sparse(indices, decoded)

    def add(self, total, rows, counts, dtype):
        """Add every worker's pairs (``rows``: one per worker, in rank order; ``counts``: how many of each
        row's pairs are real) into ``total``. Deterministic on every device: one ``index_add_`` per worker, in
        rank order; a worker's indices are distinct, so no element receives two atomic adds in one call
        (CUDA's ``index_add_`` is only non-deterministic for repeated indices), and every rank adds the same
        bytes in the same order."""
        numel = total.numel()
        fixed = self.nbytes(0, dtype, numel)
        capacity = (rows.shape[1] - fixed) // (self.nbytes(1, dtype, numel) - fixed)
        scale_end, values_size, counts_size, _ = self._layout(capacity, dtype, numel)
        values_end = scale_end + values_size
        indices_start = values_end + counts_size
        values = _aligned(rows[:, scale_end:values_end]).view(self.value_dtype or dtype).to(total.dtype)
        if self.value_dtype == torch.int8:
            values *= _aligned(rows[:, :scale_end]).view(torch.float32).to(total.dtype)
        indices = _aligned(rows[:, indices_start:]).view(self.index_dtype).long()
        if self.index_dtype == torch.int16:
            indices &= self.BLOCK - 1
            if counts_size:     # a pair's block: how many blocks end at or before its position in the row
                ends = _aligned(rows[:, values_end:indices_start]).view(torch.int32).long().cumsum(1)
                positions = torch.arange(capacity, device=rows.device).expand(rows.shape[0], capacity)
                indices += torch.searchsorted(ends, positions.contiguous(), right=True) * self.BLOCK
        for worker_indices, worker_values, count in zip(indices, values, counts):
            total.index_add_(0, worker_indices[:count], worker_values[:count])
        return total


def dense_average(result, out=None):
    """The average of a densely sent selection (the allreduce's ``result``, already averaged), flat and in
    ``out`` when that has its dtype."""
    result = result.view(-1)
    return out.copy_(result) if out is not None and out.dtype == result.dtype else result


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
