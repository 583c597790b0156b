"""Threshold sparsification (Strom, Interspeech 2015): send every value with |x| >= ``threshold``, a count
that differs per worker and step, possibly zero. Two rounds keep every collective's size known in advance:
the workers allgather their counts (4 bytes each), then allgather their pairs padded to the largest count;
when no worker selected anything the second round is skipped on every rank alike (no empty collective)."""
from dataclasses import dataclass

import torch

from dgc.compressors.base import Compressor, Payload, check_min_numel
from dgc.compressors.sparse import Pairs, accumulator


@dataclass
class _Ctx:
    name: str
    values: torch.Tensor
    indices: torch.Tensor
    numel: int
    dtype: torch.dtype
    counts: list = None


class ThresholdCompressor(Compressor):
    """Send the values of magnitude at least ``threshold`` (a fixed gradient magnitude, not a fraction; with
    ResidualMemory the rest accumulates until it crosses it). Pairs are encoded as in :class:`Pairs`.
    ``counts`` holds each tensor's per-worker counts of its last exchange (for inspection; not state)."""

    def __init__(self, threshold=0.01, fp16_values=False, int32_indices=False, min_compress_numel=1024,
                 compact_indices=False):
        if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not threshold > 0:
            raise ValueError(f"ThresholdCompressor: threshold={threshold!r} must be a number > 0 "
                             "(the gradient magnitude a value must reach to be sent)")
        self.threshold = float(threshold)
        self.min_compress_numel = check_min_numel("ThresholdCompressor", min_compress_numel)
        self.pairs = Pairs("ThresholdCompressor", fp16_values, False, int32_indices, compact_indices)
        self.counts = {}

    def compress(self, tensor, name):
        flat = tensor.view(-1)
        self.pairs.check_addressable(flat, name)
        indices = (flat.abs() >= self.threshold).nonzero().view(-1)
        values = flat[indices]
        _, sent = self.pairs.encode(values, indices, indices.numel(), flat.numel())
        count = torch.tensor([indices.numel()], dtype=torch.int32, device=flat.device).view(torch.uint8)
        return Payload(count, "allgather", indices.numel(), sent), _Ctx(name, values, indices, flat.numel(), tensor.dtype)

    def decompress(self, result, ctx, out=None):
        """Round 1 (the counts arrived): the padded pairs' payload, or zeros when every count is 0.
        Round 2: the average of every worker's real pairs."""
        total = accumulator(ctx.numel, ctx.dtype, result.device, out)
        if ctx.counts is None:
            ctx.counts = self.counts[ctx.name] = result.view(torch.int32).tolist()
            if max(ctx.counts) > 0:
                row, _ = self.pairs.encode(ctx.values, ctx.indices, max(ctx.counts), ctx.numel)
                return Payload(row, "allgather", 0), ctx
            return total
        self.pairs.add(total, result.view(len(ctx.counts), -1), ctx.counts, ctx.dtype)
        return total.div_(len(ctx.counts))
