"""signSGD (Bernstein et al., ICML 2018): one bit per element, the sign. With ``scaled=True`` the sign is
multiplied by mean |x| (Karimireddy et al., ICML 2019, EF-SignSGD, whose error feedback is ResidualMemory:
configs/compression/efsignsgd.py)."""
import torch

from dgc.compressors.packing import pack, unpack
from dgc.compressors.quantize import QuantizingCompressor, bytes_float, float_bytes


class SignSGDCompressor(QuantizingCompressor):
    """Bit 1 for x >= 0, 0 for x < 0, packed eight to a byte, plus one float32 magnitude (1.0 unscaled).
    The average over workers of the signs is applied (for a majority vote, take its sign in the optimizer)."""

    def __init__(self, scaled=False, min_compress_numel=1024):
        self.scaled = bool(scaled)
        super().__init__(min_compress_numel)

    def encode(self, x):
        magnitude = x.float().abs().mean() if self.scaled else torch.ones((), device=x.device)
        return torch.cat([float_bytes(magnitude), pack(x >= 0, 1)])

    def decode(self, data, shape):
        magnitude = bytes_float(data, 1)
        return (unpack(data[4:], 1, shape.numel()).float() * 2 - 1) * magnitude
