"""signSGD (Bernstein et al., ICML 2018): one bit per element, the sign. The workers' signs are averaged
(mean of signs), or with ``majority=True`` voted: the update is the sign of their sum (Algorithm 3, signSGD
with majority vote, without momentum; Signum's vote is configs/compression/signum.py). With ``scaled=True``
the sign is multiplied by mean |x| (Karimireddy et al., ICML 2019, EF-SignSGD, whose error feedback is
ResidualMemory: configs/compression/efsignsgd.py)."""
import torch

from dgc.compressors.packing import pack, unpack
from dgc.compressors.quantize import QuantizingCompressor, bytes_float, float_bytes


class SignSGDCompressor(QuantizingCompressor):
    """Bit 1 for x >= 0, 0 for x < 0, packed eight to a byte, plus one float32 magnitude (1.0 unscaled).
    The average over workers of the signs is applied, or with ``majority`` its sign (0 on a tie)."""

    def __init__(self, scaled=False, majority=False, min_compress_numel=1024):
        if scaled and majority:
            raise ValueError("SignSGDCompressor: majority=True votes unit signs (Bernstein et al.); scaled=True "
                             "is EF-SignSGD's mean-|x| magnitude, which a vote would discard: choose one")
        self.scaled = bool(scaled)
        self.majority = bool(majority)
        super().__init__(min_compress_numel)

    def encode(self, x):
        magnitude = x.float().abs().mean() if self.scaled else torch.ones((), device=x.device)
        return torch.cat([float_bytes(magnitude), pack(x >= 0, 1)])

    def decode(self, data, shape):
        magnitude = bytes_float(data, 1)
        return (unpack(data[4:], 1, shape.numel()).float() * 2 - 1) * magnitude

    def decompress(self, result, ctx, out=None):
        average = super().decompress(result, ctx, out)
        return average.sign_() if self.majority else average
