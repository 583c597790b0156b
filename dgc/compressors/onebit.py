"""1-bit SGD (Seide et al., Interspeech 2014): one bit per value, the sign, reconstructed per row of the
gradient matrix as the mean of that row's non-negative or negative values; made to work by error feedback
(ResidualMemory, configs/compression/onebit.py)."""
import torch

from dgc.compressors.packing import pack, unpack
from dgc.compressors.quantize import QuantizingCompressor, bytes_float, float_bytes


class OneBitCompressor(QuantizingCompressor):
    """Rows are the parameter's first dimension; per row two float32 (the two reconstruction values)."""

    def encode(self, x):
        rows = x.float().view(x.shape[0], -1)
        positive = rows >= 0
        count = positive.sum(1)
        up = (rows * positive).sum(1) / count.clamp(min=1)
        down = (rows * ~positive).sum(1) / (rows.shape[1] - count).clamp(min=1)
        return torch.cat([float_bytes(torch.stack([up, down], 1)), pack(positive, 1)])

    def decode(self, data, shape):
        rows = shape[0]
        up, down = bytes_float(data, 2 * rows).view(rows, 2).unbind(1)
        positive = unpack(data[8 * rows:], 1, shape.numel()).view(rows, -1).bool()
        return torch.where(positive, up[:, None], down[:, None]).view(-1)
