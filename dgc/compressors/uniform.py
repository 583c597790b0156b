"""Uniform quantization with a per-chunk scale and zero point (as in QSGD-style bucketing and 8-bit
communication, e.g. Dettmers 2016): each chunk of ``chunk`` values maps [min, max] onto 2**bits levels,
rounded to nearest; 8-bit codes take a byte, 4-bit codes two to a byte."""
import torch
import torch.nn.functional as F

from dgc.compressors.packing import pack, unpack
from dgc.compressors.quantize import QuantizingCompressor, bytes_float, float_bytes


class UniformCompressor(QuantizingCompressor):
    """``bits`` in {2, 4, 8}; per chunk two float32 (min and step). Biased (round to nearest): pair it with
    ResidualMemory so the rounding error is fed back."""

    def __init__(self, bits=8, chunk=256, min_compress_numel=1024):
        if bits not in (2, 4, 8) or isinstance(bits, bool):
            raise ValueError(f"UniformCompressor: bits={bits!r} must be 2, 4 or 8")
        if isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 1:
            raise ValueError(f"UniformCompressor: chunk={chunk!r} must be an int >= 1")
        super().__init__(min_compress_numel)
        self.bits, self.chunk = bits, chunk

    def encode(self, x):
        x = x.float().view(-1)
        chunks = F.pad(x, (0, (-x.numel()) % self.chunk)).view(-1, self.chunk)
        low, high = chunks.min(1).values, chunks.max(1).values
        step = (high - low) / (2 ** self.bits - 1)
        codes = ((chunks - low[:, None]) / step.clamp(min=torch.finfo(torch.float32).tiny)[:, None]).round()
        codes = codes.clamp(0, 2 ** self.bits - 1).view(-1)[:x.numel()]
        return torch.cat([float_bytes(torch.stack([low, step], 1)), pack(codes, self.bits)])

    def decode(self, data, shape):
        numel = shape.numel()
        num_chunks = -(-numel // self.chunk)
        low, step = bytes_float(data, 2 * num_chunks).view(num_chunks, 2).unbind(1)
        codes = unpack(data[8 * num_chunks:], self.bits, numel).float()
        chunk_of = torch.arange(numel, device=data.device) // self.chunk
        return low[chunk_of] + codes * step[chunk_of]
