"""Threshold sparsification (Strom, Interspeech 2015): send every value with |x| >= ``threshold``, a count
that differs per worker and step, possibly zero. Two rounds keep every collective's size known in advance:
the workers allgather their counts (4 bytes each), then allgather their pairs padded to the largest count;
when no worker selected anything the second round is skipped on every rank alike (no empty collective).
The count is counted on the device and read on the host once per tensor, with the gathered counts (which the
second round's size needs): the selection then has a known size (``nonzero_static``). The gathered counts also
decide the sparse/dense switch (SparCML, SC'19; see :class:`~dgc.compressors.sparse.SparseCompressor`) alike on
every rank: where the allgather of pairs padded to the largest count would move more bytes than an allreduce,
the second round sends the selection densely."""
from dataclasses import dataclass

import torch

from dgc.compressors.base import Compressor, Payload, check_min_numel
from dgc.compressors.sparse import Pairs, accumulator, dense_average


@dataclass
class _Ctx:
    name: str
    flat: torch.Tensor
    """The compressed tensor, unchanged until the second round selects from it (the memory is updated only
    from that round's ``sent``)."""
    count: torch.Tensor
    numel: int
    dtype: torch.dtype
    counts: list = None
    dense: bool = False
    """The second round sends the selection densely, through an averaging allreduce (``dense_switch``)."""


class ThresholdCompressor(Compressor):
    """Send the values of magnitude at least ``threshold`` (a fixed gradient magnitude, not a fraction; with
    ResidualMemory the rest accumulates until it crosses it). Pairs are encoded as in :class:`Pairs`.
    ``counts`` holds each tensor's per-worker counts of its last exchange (for inspection; not state).
    ``dense_switch``: send a selection densely where that moves fewer bytes (see the module doc); False: always
    the allgather of pairs."""

    def __init__(self, threshold=0.01, fp16_values=False, int32_indices=False, min_compress_numel=1024,
                 compact_indices=False, dense_switch=True):
        if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not threshold > 0:
            raise ValueError(f"ThresholdCompressor: threshold={threshold!r} must be a number > 0 "
                             "(the gradient magnitude a value must reach to be sent)")
        if not isinstance(dense_switch, bool):
            raise ValueError(f"ThresholdCompressor: dense_switch={dense_switch!r} must be True (send a selection "
                             "densely where that moves fewer bytes) or False (always the allgather of pairs)")
        self.dense_switch = dense_switch
        self.threshold = float(threshold)
        self.min_compress_numel = check_min_numel("ThresholdCompressor", min_compress_numel)
        self.pairs = Pairs("ThresholdCompressor", fp16_values, False, int32_indices, compact_indices)
        self.counts = {}

    def compress(self, tensor, name):
        """Round 1: this worker's count as int32 (4 bytes), counted on the device; the values are selected
        once the counts are known (:meth:`decompress`)."""
        flat = tensor.view(-1)
        self.pairs.check_addressable(flat, name)
        count = (flat.abs() >= self.threshold).sum(dtype=torch.int32).reshape(1)
        return Payload(count.view(torch.uint8), "allgather", 0), _Ctx(name, flat, count, flat.numel(), tensor.dtype)

    def decompress(self, result, ctx, out=None):
        """Round 1 (the counts arrived): the padded pairs' payload (or the dense selection's), with what this
        worker sent, or zeros when every count is 0. Round 2: the average of every worker's real pairs."""
        if ctx.counts is None:
            *counts, mine = torch.cat([result.view(torch.int32), ctx.count]).tolist()   # the one host read
            ctx.counts = self.counts[ctx.name] = counts
            if max(counts) > 0:
                indices = torch.nonzero_static(ctx.flat.abs() >= self.threshold, size=mine).view(-1)
                ctx.dense = self.dense_switch and self.pairs.goes_dense(len(counts), max(counts), ctx.dtype, ctx.numel)
                if ctx.dense:
                    dense, sent = self.pairs.encode_dense(ctx.flat[indices], indices, ctx.numel)
                    return Payload(dense, "allreduce", mine, sent), ctx
                row, sent = self.pairs.encode(ctx.flat[indices], indices, max(counts), ctx.numel)
                return Payload(row, "allgather", mine, sent), ctx
            return accumulator(ctx.numel, ctx.dtype, result.device, out)
        if ctx.dense:
            return dense_average(result, out)
        total = accumulator(ctx.numel, ctx.dtype, result.device, out)
        self.pairs.add(total, result.view(len(ctx.counts), -1), ctx.counts, ctx.dtype)
        return total.div_(len(ctx.counts))
