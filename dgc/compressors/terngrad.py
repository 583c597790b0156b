"""TernGrad (Wen et al., NeurIPS 2017, §3): each value becomes s * sign(x) * b with s = max|x| and
b ~ Bernoulli(|x| / s): unbiased, three levels, 2 bits per element plus one float32 scale."""
import torch

from dgc.compressors.packing import pack, unpack
from dgc.compressors.quantize import QuantizingCompressor, bytes_float, float_bytes


class TernGradCompressor(QuantizingCompressor):
    """Codes 0 (zero), 1 (+s), 2 (-s), packed four to a byte (the paper's per-layer scale, no clipping)."""

    def encode(self, x):
        x = x.float().view(-1)
        scale = x.abs().max()
        keep = torch.rand_like(x) * scale < x.abs()
        codes = keep * (1 + (x < 0))
        return torch.cat([float_bytes(scale), pack(codes, 2)])

    def decode(self, data, shape):
        scale = bytes_float(data, 1)
        codes = unpack(data[4:], 2, shape.numel())
        return (codes == 1).float() * scale - (codes == 2).float() * scale
