"""fp16 (Horovod's ``Compression.fp16``, the reference): the tensor is cast to half precision (clamped to
+-65504 instead of overflowing to inf) and averaged by allreduce; the average is cast back to the
gradient's dtype. With an error-feedback memory the rounding error is kept."""
import torch

from dgc.compressors.base import Compressor, Payload, check_min_numel


class FP16Compressor(Compressor):
    """Cast to ``wire_dtype`` for the allreduce (2 bytes per value); the communicators sum 16-bit payloads
    of values divided by the worker count first, so the sum itself cannot overflow."""

    wire_dtype = torch.float16

    def __init__(self, min_compress_numel=1):
        self.min_compress_numel = check_min_numel(type(self).__name__, min_compress_numel)

    def compress(self, tensor, name):
        limit = torch.finfo(self.wire_dtype).max
        wire = tensor.clamp(-limit, limit).to(self.wire_dtype)
        return Payload(wire, "allreduce", wire.numel(), sent=wire.to(tensor.dtype)), tensor.dtype

    def decompress(self, result, ctx, out=None):
        return result.to(ctx)
