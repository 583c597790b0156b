"""Signum with majority vote (Bernstein et al., ICML 2018, Algorithm 3; ICLR 2019, Algorithm 1): each worker
keeps its own momentum m = beta * m + (1 - beta) * g and sends sign(m), one bit per value; the update is
the sign of the workers' sum of signs (the majority; 0 on a tie)."""
import torch

from dgc.compressors.packing import pack, unpack
from dgc.compressors.quantize import QuantizingCompressor
from dgc.memory import buffer_dtype


class SignumCompressor(QuantizingCompressor):
    """Bits packed eight to a byte, no scale. The momentum buffers are per tensor and per rank, checkpointed
    (state). Use no memory, a plain optimizer (momentum 0: the momentum is here) and a small learning rate:
    every compressed value moves by exactly lr or 0."""

    shared_state = ()       # the momentum is per rank: each rank's own gradients

    def __init__(self, beta=0.9, min_compress_numel=1024):
        if isinstance(beta, bool) or not isinstance(beta, (int, float)) or not 0 <= beta < 1:
            raise ValueError(f"SignumCompressor: beta={beta!r} must be in [0, 1) (the momentum coefficient)")
        self.beta = float(beta)
        self.momentum = {}
        super().__init__(min_compress_numel)

    def compress(self, tensor, name):
        """The new momentum replaces the old one (computed out of place), so the exchange's snapshot of the
        state for a skipped step is the state_dict itself, not a copy. Kept in float32 (float64 for float64)
        whatever the gradient dtype, as the memories are: 16 bits would round small steps of it away."""
        dtype = buffer_dtype(tensor.dtype)
        momentum = self.momentum.get(name)
        if momentum is None:
            momentum = torch.zeros_like(tensor, dtype=dtype)
        momentum = self.momentum[name] = torch.lerp(momentum, tensor.to(dtype), 1 - self.beta)
        return super().compress(momentum, name)

    def encode(self, x):
        return pack(x >= 0, 1)

    def decode(self, data, shape):
        return unpack(data, 1, shape.numel()).float() * 2 - 1

    def decompress(self, result, ctx, out=None):
        """The majority: sign of the rank-ordered sum of the workers' signs."""
        return super().decompress(result, ctx, out).sign_()

    def state_dict(self):
        return {"momentum": dict(self.momentum)}

    def load_state_dict(self, state):
        """Take the momenta without a copy: they are never changed in place, so sharing them is safe."""
        self.momentum = dict(state["momentum"])
