"""What every quantizer shares: each worker's tensor becomes a fixed number of bytes (bit-packed codes and
float32 scales) that one allgather carries; receivers decode every worker's bytes and average them in
rank order, so every rank gets the same bits."""
import torch

from dgc.compressors.base import Compressor, Payload, check_min_numel
from dgc.compressors.sparse import accumulator


class QuantizingCompressor(Compressor):
    """Base of the quantizers. Subclasses implement :meth:`encode` (tensor -> uint8 bytes whose count
    depends only on the shape) and :meth:`decode` (bytes and shape -> flat float32 values). ``sent`` is
    the local decoding, so an error-feedback memory keeps exactly what quantization lost."""

    def __init__(self, min_compress_numel=1024):
        self.min_compress_numel = check_min_numel(type(self).__name__, min_compress_numel)

    def encode(self, x):
        """uint8 bytes for the float tensor ``x`` (in its parameter's shape)."""
        raise NotImplementedError

    def decode(self, data, shape):
        """The flat float32 values of a tensor of ``shape`` that ``data`` encodes."""
        raise NotImplementedError

    def compress(self, tensor, name):
        data = self.encode(tensor)
        sent = self.decode(data, tensor.shape).to(tensor.dtype)
        return Payload(data, "allgather", tensor.numel(), sent), (tensor.shape, tensor.dtype, data.numel())

    def decompress(self, result, ctx, out=None):
        shape, dtype, nbytes = ctx
        rows = result.view(-1, nbytes)
        total = accumulator(shape.numel(), dtype, result.device, out)
        for row in rows:
            total += self.decode(row, shape)
        return total.div_(rows.shape[0])


def float_bytes(values):
    """float32 ``values`` as bytes (to travel inside a quantizer's payload)."""
    return values.to(torch.float32).reshape(-1).view(torch.uint8)


def bytes_float(data, count):
    """The first ``count`` float32 values stored by :func:`float_bytes` at the start of ``data``."""
    return data[:4 * count].clone().view(torch.float32)
