"""QSGD (Alistarh et al., NeurIPS 2017, §3.1) with bucketing (§3: each bucket of d consecutive values
quantized with its own norm; d = 512 as in the paper's experiments): stochastic rounding of
|x| / ||bucket||_2 to ``levels`` levels, unbiased, with the variance bound of Lemma 3.1 per bucket,
E||Q(v) - v||^2 <= min(d / s^2, sqrt(d) / s) ||v||^2, instead of one that grows with the tensor's size. The
sign and the level travel bit-packed, with one float32 norm per bucket."""
import torch
import torch.nn.functional as F

from dgc.compressors.packing import pack, unpack
from dgc.compressors.quantize import QuantizingCompressor, bytes_float, float_bytes


class QSGDCompressor(QuantizingCompressor):
    """``levels`` = s in [1, 127]: code = 2 * level + sign bit, packed 2, 4 or 8 bits per element (s = 1:
    2 bits; s <= 7: 4 bits; else 8). ``bucket_size`` = d values per norm (None: one norm for the whole
    tensor, QSGD without bucketing). E[decoded] = x (the rounding is stochastic, from torch's RNG)."""

    def __init__(self, levels=4, bucket_size=512, min_compress_numel=1024):
        if isinstance(levels, bool) or not isinstance(levels, int) or not 1 <= levels <= 127:
            raise ValueError(f"QSGDCompressor: levels={levels!r} must be an int in [1, 127]")
        if bucket_size is not None and (isinstance(bucket_size, bool) or not isinstance(bucket_size, int)
                                        or bucket_size < 1):
            raise ValueError(f"QSGDCompressor: bucket_size={bucket_size!r} must be an int >= 1 (values per norm) "
                             "or None (one norm per tensor)")
        self.levels = levels
        self.bucket_size = bucket_size
        self.bits = next(b for b in (2, 4, 8) if 2 * levels + 1 < 2 ** b)
        super().__init__(min_compress_numel)

    def buckets(self, numel):
        """``(count, size)`` of the buckets of a tensor of ``numel`` values (the last one zero-padded)."""
        size = min(self.bucket_size or numel, numel)
        return -(-numel // size), size

    def encode(self, x):
        x = x.float().view(-1)
        count, size = self.buckets(x.numel())
        padded = F.pad(x, (0, count * size - x.numel())).view(count, size)
        norms = torch.linalg.vector_norm(padded, dim=1)
        factor = self.levels / norms.clamp(min=torch.finfo(torch.float32).tiny)
        level = padded.abs().mul_(factor.unsqueeze(1)).add_(torch.rand_like(padded)).floor_().clamp_(max=self.levels)
        codes = level.mul_(2).add_(padded < 0).view(-1)[:x.numel()]
        return torch.cat([float_bytes(norms), pack(codes, self.bits)])

    def decode(self, data, shape):
        count, size = self.buckets(shape.numel())
        steps = bytes_float(data, count) / self.levels
        codes = unpack(data[4 * count:], self.bits, shape.numel())
        magnitude = (codes >> 1).float() * steps.repeat_interleave(size)[:shape.numel()]
        return torch.where(codes & 1 == 1, -magnitude, magnitude)
