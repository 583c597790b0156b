"""Natural compression (Horvath et al., 2019, "Natural compression for distributed deep learning", §3):
each value is rounded stochastically to one of the two powers of two around it, with probabilities that
make it unbiased; only sign and exponent travel, one byte per value."""
import torch

from dgc.compressors.quantize import QuantizingCompressor, bytes_float, float_bytes

_SPAN = 126
"""Exponents a tensor's codes cover below its largest: 2^(top - 126) .. 2^top (codes 1..127)."""


class NaturalCompressor(QuantizingCompressor):
    """Code per value: bit 7 the sign, bits 0-6 the exponent relative to the tensor's smallest covered one
    (0: zero), plus that exponent as one float32. A value below the covered range rounds stochastically
    to 0 or the smallest power of two, still unbiased (E[decoded] = x)."""

    def encode(self, x):
        x = x.float().view(-1)
        magnitude = x.abs()
        mantissa, exponent = torch.frexp(magnitude)          # magnitude = mantissa * 2^exponent, mantissa in [0.5, 1)
        lowest = exponent.max() - _SPAN
        floor = exponent - 1
        up = torch.rand_like(magnitude) < mantissa * 2 - 1   # round 2^floor * (1 + p) up with probability p
        codes = floor + up - lowest + 1
        below = floor < lowest                               # round to 0 or 2^lowest (code 1), unbiased
        codes = torch.where(below, (torch.rand_like(magnitude) < torch.ldexp(magnitude, -lowest)).long(), codes)
        codes = torch.where(magnitude == 0, 0, codes)
        codes = codes + 128 * ((x < 0) & (codes > 0))
        return torch.cat([float_bytes(lowest.float()), codes.to(torch.uint8)])

    def decode(self, data, shape):
        lowest = bytes_float(data, 1)
        codes = data[4:4 + shape.numel()].long()
        level = codes & 127
        magnitude = torch.where(level == 0, 0.0, torch.exp2(lowest + level - 1))
        return torch.where(codes >= 128, -magnitude, magnitude)
