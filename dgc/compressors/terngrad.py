"""TernGrad (Wen et al., NeurIPS 2017, §3): each value becomes s * sign(x) * b with s = max|x| of the tensor
(layer-wise) and b ~ Bernoulli(|x| / s): three levels, 2 bits per element plus one float32 scale.

Two choices differ from the paper. The scale is each worker's own, not shared (the paper's s = max over
workers, one more round, so that a parameter server can sum ternaries as integers): every worker's
decoding stays unbiased and the variance is not larger (a shared s is >= each worker's). Gradient clipping
(the paper's §4: |x| clipped to c * sigma of the tensor, c = 2.5) is ``clip_sigma`` and off by default:
it lowers the variance (s falls from max|x| to at most c * sigma) at the price of a bias, since a clipped
value's expectation is the clipped value (configs/compression/terngrad_clip.py is the paper's variant)."""
import torch

from dgc.compressors.packing import pack, unpack
from dgc.compressors.quantize import QuantizingCompressor, bytes_float, float_bytes


class TernGradCompressor(QuantizingCompressor):
    """Codes 0 (zero), 1 (+s), 2 (-s), packed four to a byte. ``clip_sigma`` = c: None (unbiased, no
    clipping) or a positive number (values clipped to +-c standard deviations of the tensor first)."""

    def __init__(self, clip_sigma=None, min_compress_numel=1024):
        if clip_sigma is not None and (isinstance(clip_sigma, bool) or not isinstance(clip_sigma, (int, float))
                                       or not 0 < clip_sigma < float("inf")):
            raise ValueError(f"TernGradCompressor: clip_sigma={clip_sigma!r} must be None (no clipping) or a "
                             "positive number of standard deviations (the paper's 2.5)")
        self.clip_sigma = None if clip_sigma is None else float(clip_sigma)
        super().__init__(min_compress_numel)

    def encode(self, x):
        x = x.float().view(-1)
        magnitude = x.abs()
        if self.clip_sigma is not None:
            magnitude = magnitude.clamp_(max=self.clip_sigma * x.std())
        scale = magnitude.max()
        keep = torch.rand_like(x) * scale < magnitude
        codes = keep * (1 + (x < 0))
        return torch.cat([float_bytes(scale), pack(codes, 2)])

    def decode(self, data, shape):
        scale = bytes_float(data, 1)
        codes = unpack(data[4:], 2, shape.numel())
        return (codes == 1).float() * scale - (codes == 2).float() * scale
