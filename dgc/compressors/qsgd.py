"""QSGD (Alistarh et al., NeurIPS 2017, §3.1): stochastic rounding of |x| / ||x||_2 to ``levels`` levels,
unbiased; the sign and the level travel bit-packed, with the norm as one float32."""
import torch

from dgc.compressors.packing import pack, unpack
from dgc.compressors.quantize import QuantizingCompressor, bytes_float, float_bytes


class QSGDCompressor(QuantizingCompressor):
    """``levels`` = s in [1, 127]: code = 2 * level + sign bit, packed 2, 4 or 8 bits per element (s = 1:
    2 bits; s <= 7: 4 bits; else 8). E[decoded] = x (the rounding is stochastic, from torch's RNG)."""

    def __init__(self, levels=4, min_compress_numel=1024):
        if isinstance(levels, bool) or not isinstance(levels, int) or not 1 <= levels <= 127:
            raise ValueError(f"QSGDCompressor: levels={levels!r} must be an int in [1, 127]")
        self.levels = levels
        self.bits = next(b for b in (2, 4, 8) if 2 * levels + 1 < 2 ** b)
        super().__init__(min_compress_numel)

    def encode(self, x):
        x = x.view(-1)
        norm = torch.linalg.vector_norm(x.float())
        scaled = x.float().abs() / norm.clamp(min=torch.finfo(torch.float32).tiny) * self.levels
        level = (scaled + torch.rand_like(scaled)).floor().clamp(max=self.levels)
        codes = level * 2 + (x < 0)
        return torch.cat([float_bytes(norm), pack(codes, self.bits)])

    def decode(self, data, shape):
        norm = bytes_float(data, 1)
        codes = unpack(data[4:], self.bits, shape.numel())
        magnitude = (codes >> 1).float() * (norm / self.levels)
        return torch.where(codes & 1 == 1, -magnitude, magnitude)
